"""GITT and ICI estimators against the exact constant-flux sphere solution with a known D."""

import numpy as np
import pytest

from cyclerctl.analysis.base import Event
from cyclerctl.analysis.diffusion import classic_bias, sphere_h
from cyclerctl.analysis.gitt import GittOperator, GittSettings
from cyclerctl.analysis.ici import IciOperator, IciSettings
from cyclerctl.analysis.synthetic import gitt_pulse_train

R = 3.5e-6
TAU_D = 6000.0
D = R * R / TAU_D
Q = 3.6  # C


def run(op, cols, events):
    rows, pos = [], 0
    for e in events:
        rows += op.feed_samples({k: v[pos:e.sample_seq] for k, v in cols.items()})
        pos = e.sample_seq
        rows += op.feed_event(e)
    rows += op.feed_samples({k: v[pos:] for k, v in cols.items()})
    return [r.data for r in rows]


def pulses(ratio, noise=0.0, ocv_slope=-1.0, n=3, seed=0, rest_factor=6.0):
    tau = ratio * TAU_D
    cols, events = gitt_pulse_train(d=D, radius=R, q_th=Q, ocv_slope=ocv_slope, current=-0.01 * Q / tau,
                                    pulse=tau, rest=rest_factor * TAU_D, n_pulses=n, r_ohm=20.0,
                                    dt_pulse=min(0.5, tau / 200), noise=noise, seed=seed)
    return run(GittOperator(GittSettings(particle_radius=R, nominal_capacity=Q)), cols, events)


def test_sphere_series_matches_its_short_time_expansion():
    u = np.array([1e-6, 1e-5, 1e-4])
    exact = sphere_h(u)
    assert np.allclose((exact - 2 * np.sqrt(u / np.pi)) / u, 1.0, atol=0.01)
    assert classic_bias(0.01) == pytest.approx(0.833, abs=0.002)  # the documented geometric bias


@pytest.mark.parametrize("ratio", [0.001, 0.01, 0.1])
def test_sphere_fit_recovers_d_on_every_valid_pulse(ratio):
    rows = pulses(ratio)
    assert len(rows) == 3
    # the first pulse has no previous relaxed point, so no OCV curvature: flagged, not valid
    assert "ocv_curvature_unknown" in rows[0]["flags"] and not rows[0]["valid"]
    for r in rows[1:]:
        assert r["valid"], r["flags"]
    for r in rows:  # the OCV is linear here, so the first pulse's D holds as well
        assert r["diffusion_coefficient_cm2_s"] == pytest.approx(D * 1e4, rel=0.02, abs=0)
        assert r["tau_over_diffusion_time"] == pytest.approx(ratio, rel=0.02)
        assert r["ohmic_resistance_ohm"] == pytest.approx(20.0, rel=1e-6)


@pytest.mark.parametrize("ratio", [0.001, 0.01])
def test_two_term_fit_for_short_pulses(ratio):
    for r in pulses(ratio):
        assert r["diffusion_coefficient_two_term_cm2_s"] == pytest.approx(D * 1e4, rel=0.03, abs=0)
        assert "two_term_biased" not in r["flags"]
    for seed in range(3):
        for r in pulses(ratio, noise=1e-4, seed=seed):
            assert r["diffusion_coefficient_two_term_cm2_s"] == pytest.approx(D * 1e4, rel=0.10, abs=0)


def test_long_pulses_flag_the_two_term_fit():
    r = pulses(0.1)[0]
    assert "two_term_biased" in r["flags"]
    assert r["diffusion_coefficient_two_term_cm2_s"] > 1.1 * D * 1e4  # the bias the flag warns about


@pytest.mark.parametrize("ratio", [0.001, 0.01, 0.1])
def test_classic_formula_reports_its_documented_bias(ratio):
    for r in pulses(ratio):
        got = r["diffusion_coefficient_classic_cm2_s"] / (D * 1e4)
        assert got == pytest.approx(classic_bias(ratio), rel=0.02)
        assert r["classic_bias_expected"] == pytest.approx(classic_bias(ratio), rel=0.02)
    assert "classic_biased" in pulses(0.01)[0]["flags"]


def test_plateau_and_unrelaxed_rests_are_flagged_invalid():
    flat = pulses(0.01, ocv_slope=-0.05)  # |dU/dx| = 0.05 V: a two-phase plateau
    assert all("plateau" in r["flags"] and not r["valid"] for r in flat)
    short = pulses(0.01, rest_factor=0.05)  # rest far shorter than the diffusion time
    assert all("not_relaxed" in r["flags"] and not r["valid"] for r in short)


def test_curved_ocv_flags_a_changing_slope():
    """Two pulse trains at different OCV slopes, back to back: the slope change is flagged."""
    op = GittOperator(GittSettings(particle_radius=R, nominal_capacity=Q))
    rows = []
    t_off = 0.0
    for slope in (-1.0, -2.0):
        cols, events = gitt_pulse_train(d=D, radius=R, q_th=Q, ocv_slope=slope, current=-0.6e-3, pulse=60.0,
                                        rest=6 * TAU_D, n_pulses=2)
        cols["test_time_second"] = cols["test_time_second"] + t_off
        for e in events:
            e.test_time_second += t_off
        rows += run(op, cols, [e for e in events if e.kind != "run_end"])
        t_off = float(cols["test_time_second"][-1]) + 1.0
    flags = [r["flags"] for r in rows]
    assert "ocv_slope_changing" not in flags[1]
    assert "ocv_slope_changing" in flags[2]


def ici_data(d, window_ratio=1e-3):
    """A long constant current (pseudo-steady profile) then a rest, exact sphere superposition."""
    tau_d = R * R / d
    i, slope = -1e-3, -1.0
    k = i * tau_d / (3 * Q)
    t_cc = np.arange(0.0, 2 * tau_d, tau_d / 400)
    rest = window_ratio * tau_d
    t_r = np.linspace(0.0, rest, 101)
    e_cc = 0.8 + slope * k * sphere_h(t_cc / tau_d) + i * 15.0
    e_r = 0.8 + slope * k * (sphere_h((t_cc[-1] + t_r) / tau_d) - sphere_h(t_r / tau_d))
    cols = {"test_time_second": np.r_[t_cc, t_cc[-1] + t_r], "voltage_volt": np.r_[e_cc, e_r],
            "current_ampere": np.r_[np.full(t_cc.size, i), np.zeros(t_r.size)]}
    events = [Event("step_start", 0.0, 1, 1, 0, {"technique": "ici", "tags": {"role": "current"}, "current_ampere": i}),
              Event("step_start", float(t_cc[-1]), 1, 2, t_cc.size,
                    {"technique": "ici", "tags": {"role": "interruption"}, "current_ampere": 0.0}),
              Event("run_end", float(t_cc[-1] + rest), 1, 2, t_cc.size + t_r.size, {})]
    return cols, events, rest


def test_ici_two_term_recovers_d_and_resistance():
    d = R * R / 12250.0
    cols, events, rest = ici_data(d)
    rows = run(IciOperator(IciSettings(particle_radius=R, t_min=rest / 10, t_max=rest)), cols, events)
    assert len(rows) == 1
    r = rows[0]
    assert r["diffusion_coefficient_cm2_s"] == pytest.approx(d * 1e4, rel=0.03, abs=0)
    assert r["resistance_ohm"] == pytest.approx(15.0, rel=0.01)
    # the one-term √t fit reads D high by the documented amount (about +15 % at 1e-3 τ_d)
    assert 1.05 < r["diffusion_coefficient_one_term_cm2_s"] / (d * 1e4) < 1.25



def test_pulse_much_longer_than_the_diffusion_time_is_flagged():
    long_pulse = pulses(30.0, n=2)[0]
    assert "diffusion_time_unresolved" in long_pulse["flags"] and not long_pulse["valid"]
    assert "diffusion_time_unresolved" not in pulses(0.1, n=2)[0]["flags"]


def pulse_train(ratio, ocv_slope=-1.0, dx=0.01, n=3):
    """A GITT train at τ/τ_d = `ratio`, each pulse moving the stoichiometry by `dx`."""
    tau = ratio * TAU_D
    return gitt_pulse_train(d=D, radius=R, q_th=Q, ocv_slope=ocv_slope, current=-dx * Q / tau, pulse=tau,
                            rest=6.0 * TAU_D, n_pulses=n, r_ohm=20.0, dt_pulse=min(0.5, tau / 200))


@pytest.mark.parametrize("ratio, nonlinear", [(0.01, False), (0.03, False), (0.1, True), (0.3, True)])
def test_sqrt_t_nonlinear_flags_long_pulses_without_invalidating_them(ratio, nonlinear):
    """E against √t over the pulse (t ≥ t_min) bends once the pulse is long against τ_d (R² 0.9996 at
    τ/τ_d = 0.01, 0.9985 at 0.03, 0.9947 at 0.1, 0.983 at 0.3): below R² = 0.995 the row is flagged
    `sqrt_t_nonlinear`, which concerns the √t estimators only; the sphere fit stays valid and exact."""
    cols, events = pulse_train(ratio)
    rows = run(GittOperator(GittSettings(particle_radius=R, nominal_capacity=Q)), cols, events)
    starts = [e for e in events if e.kind == "step_start" and (e.tags or {}).get("role") == "pulse"]
    second = starts[1]
    a, b = second.sample_seq, second.sample_seq + int(np.searchsorted(cols["test_time_second"][second.sample_seq:],
                                                                       second.test_time_second + ratio * TAU_D,
                                                                       side="right"))
    t = cols["test_time_second"][a:b] - second.test_time_second
    e = cols["voltage_volt"][a:b]
    w = t >= 1.0
    r2 = np.corrcoef(np.sqrt(t[w]), e[w])[0, 1] ** 2  # R² of the least-squares line E = a + k√t
    row = rows[1]
    assert row["sqrt_t_r2"] == pytest.approx(r2, rel=1e-9)
    assert ("sqrt_t_nonlinear" in row["flags"]) is nonlinear
    assert nonlinear is bool(r2 < 0.995)
    assert row["valid"], row["flags"]
    assert row["diffusion_coefficient_cm2_s"] == pytest.approx(D * 1e4, rel=1e-6, abs=0)


@pytest.mark.parametrize("ocv_slope, dx, plateau_with_capacity, plateau_without", [
    (-1.5, 0.001, False, True),   # ΔE_s = 1.5 mV but dU/dx = 1.5 V: sloping, only the 2 mV rule calls it a plateau
    (-0.1, 0.05, True, False),    # ΔE_s = 5 mV but dU/dx = 0.1 V: a plateau the 2 mV rule misses
    (-0.19, 0.01, True, True),    # 1.9 mV, 0.19 V: below both limits
    (-0.25, 0.01, False, False),  # 2.5 mV, 0.25 V: above both
])
def test_plateau_rule_with_and_without_the_nominal_capacity(ocv_slope, dx, plateau_with_capacity, plateau_without):
    """With a nominal capacity a pulse is on a plateau when |dU/dx| = |ΔE_s/Q_pulse|·Q_nominal < 0.2 V;
    without one, when |ΔE_s| < 2 mV. Plateau pulses are not valid."""
    cols, events = pulse_train(0.01, ocv_slope=ocv_slope, dx=dx)
    for capacity, plateau in ((Q, plateau_with_capacity), (None, plateau_without)):
        rows = run(GittOperator(GittSettings(particle_radius=R, nominal_capacity=capacity)), cols, events)
        for row in rows:
            assert row["delta_e_s_volt"] == pytest.approx(ocv_slope * dx, rel=1e-3)
            assert ("plateau" in row["flags"]) is plateau, (capacity, row["flags"])
            if capacity is None:
                assert "ocv_slope_volt" not in row
            else:
                assert abs(row["ocv_slope_volt"]) == pytest.approx(abs(ocv_slope), rel=1e-3)
        assert rows[1]["valid"] is (not plateau)
