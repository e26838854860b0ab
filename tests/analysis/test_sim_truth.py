"""The estimators held to the simulator's ground truth (cyclerctl.sim Plant, hard-carbon preset, no
noise) at x ≈ 0.3 in the sloping region, after one formation sodiation."""


import dataclasses

import numpy as np
import pytest

from cyclerctl.analysis.arrhenius import activation_energy
from cyclerctl.analysis.base import Event
from cyclerctl.analysis.eis import EisSettings, analyze_spectrum
from cyclerctl.analysis.gitt import GittOperator, GittSettings
from cyclerctl.analysis.ici import IciOperator, IciSettings

sim = pytest.importorskip("cyclerctl.sim")

FREQ = np.logspace(5, -3, 81)


@pytest.fixture(scope="module")
def plant():
    p = sim.Plant("hard_carbon", noise=False)
    i = 30e-3 * p.cell.active_mass * 1e3  # 30 mA/g
    while p.truth()["mean_stoichiometry"] < 0.8:
        p.advance_current(-i, 600.0)
    while p.truth()["mean_stoichiometry"] > 0.3:
        p.advance_current(i, 300.0)
    p.advance_open(6 * 3600.0)
    return p, i


def material(p):
    m = p.preset.materials[0]
    return m, m.theoretical_capacity * m.mass_fraction * p.cell.active_mass  # Q_th (C)


def test_eis_recovers_the_true_diffusion_time_and_warburg_d(plant):
    """D from σ needs the OCV slope per coulomb of the material that is still active: after the
    formation sodiation the fade has left ψ·Q_th (ψ ≈ 0.947), and dU/dx over Q_th would read D as
    ψ² ≈ 0.90 × truth whichever σ is used."""
    p, _ = plant
    m, q_th = material(p)
    tr = p.truth()
    q_active = p.model.parts()["materials"][0]["capacity"]
    assert q_active < 0.99 * q_th  # the fade this test is about
    out = analyze_spectrum(FREQ, p.impedance(FREQ),
                           EisSettings(particle_radius=m.particle_radius, ocv_slope_per_coulomb=tr["ocv_slope"] / q_active))
    assert out["best_circuit"] == "R0-p(R1,C1)-p(R2-Sph1,C2)"
    assert out["linkk_max_residual"] < 0.005
    tau_true = m.particle_radius**2 / tr["diffusion_coefficient"]
    assert out["diffusion_time_second"] == pytest.approx(tau_true, rel=0.02)
    d_true = tr["diffusion_coefficient"] * 1e4
    assert out["diffusion_coefficient_cm2_s"] == pytest.approx(d_true, rel=0.05, abs=0)
    assert out["diffusion_coefficient_fit_cm2_s"] == pytest.approx(d_true, rel=0.05, abs=0)
    assert out["diffusion_coefficient_graphical_cm2_s"] == pytest.approx(d_true, rel=0.05, abs=0)
    assert 0 < out["diffusion_coefficient_stderr_cm2_s"] < 0.01 * d_true
    sigma_true = abs(tr["ocv_slope"] / q_active) * tau_true / 3 / np.sqrt(2 * tau_true)  # A/√(2τ), A = (dU/dQ)·τ/3
    assert out["warburg_coefficient_ohm_s_half"] == pytest.approx(sigma_true, rel=0.02, abs=0)
    assert "warburg_graphical_disagrees" not in out["flags"] and out["valid"]
    assert out["series_resistance_ohm"] == pytest.approx(p.preset.series_resistance, rel=0.02)


def gitt_on_plant(p, current, pulse, n, rest=12000.0, dt=0.5):
    """n GITT pulses of `pulse` s (records every dt) with rests of `rest` s on the plant, as the
    engine journals them: columns, step_start events and the truth at each pulse start."""
    t, v, i, truth = [], [], [], []
    events = [Event("step_start", p.time, 1, 0, 0, {"technique": "rest"})]

    def record(cur, h):
        v.append(p.advance_current(cur, h) if cur else p.advance_open(h))
        t.append(p.time)
        i.append(cur)

    record(0.0, 60.0)
    for k in range(n):
        truth.append(p.truth())
        events.append(Event("step_start", p.time, 1, 2 * k + 1, len(t),
                            {"technique": "gitt", "tags": {"role": "pulse"}, "current_ampere": current}))
        record(current, 0.0)
        for _ in range(round(pulse / dt)):
            record(current, dt)
        events.append(Event("step_start", p.time, 1, 2 * k + 2, len(t),
                            {"technique": "gitt", "tags": {"role": "relax"}, "current_ampere": 0.0}))
        record(0.0, 0.0)
        for h in np.r_[np.ones(60), np.full(round(rest / 60), 60.0)]:
            record(0.0, h)
    events.append(Event("run_end", p.time, 1, 2 * n, len(t), {}))
    cols = {"test_time_second": np.array(t), "voltage_volt": np.array(v), "current_ampere": np.array(i)}
    return cols, events, truth


def feed(op, cols, events):
    rows, pos = [], 0
    for e in events:
        rows += op.feed_samples({k: x[pos:e.sample_seq] for k, x in cols.items()})
        pos = e.sample_seq
        rows += op.feed_event(e)
    return [r.data for r in rows + op.feed_samples({k: x[pos:] for k, x in cols.items()})]


@pytest.mark.parametrize("pulse", [40.0, 180.0])  # tau/tau_d ~ 0.022 and ~ 0.1
def test_gitt_sphere_fit_against_the_truth_channel(plant, pulse):
    """Desodiation pulses with 3.3 h rests: the sphere fit is within 2 % of the simulator's D on every
    pulse it does not flag. The first pulse has no previous relaxed point, so the OCV curvature across
    it is unknown (here |dU/dx| grows 3 % over the surface excursion, which alone reads D 3-7 % low):
    flagged and not valid."""
    p, i = plant
    m, q_th = material(p)
    cols, events, truth = gitt_on_plant(p, i, pulse, 3)
    rows = feed(GittOperator(GittSettings(particle_radius=m.particle_radius, nominal_capacity=q_th)), cols, events)
    assert len(rows) == 3
    assert "ocv_curvature_unknown" in rows[0]["flags"] and not rows[0]["valid"]
    for r, tr in zip(rows[1:], truth[1:], strict=True):
        assert r["valid"], r["flags"]
        assert r["diffusion_coefficient_cm2_s"] == pytest.approx(tr["diffusion_coefficient"] * 1e4, rel=0.02, abs=0)
        assert r["tau_over_diffusion_time"] == pytest.approx(pulse * tr["diffusion_coefficient"] / m.particle_radius**2,
                                                             rel=0.03)
        # the fitted response delay: the double layer charging through R_ct, t0 = 2 R_ct C_dl = 0.2 s
        assert 0.05 < r["response_delay_second"] < 0.5
        assert r["ohmic_resistance_ohm"] > p.preset.series_resistance


def test_activation_energy_of_charge_transfer_over_a_temperature_series(plant):
    p, _ = plant
    m, q_th = material(p)
    temps, rct = [], []
    for celsius in (10.0, 25.0, 40.0, 55.0):
        p.set_ambient(celsius + 273.15)
        p.advance_open(3600.0)
        out = analyze_spectrum(FREQ[FREQ > 0.01], p.impedance(FREQ[FREQ > 0.01]), EisSettings())
        temps.append(p.temperature)
        rct.append(out["charge_transfer_resistance_ohm"])
    p.set_ambient(298.15)
    p.advance_open(3600.0)
    ea, _ = activation_energy(np.array(temps), np.array(rct) / np.array(temps))
    assert ea / 1e3 == pytest.approx(m.charge_transfer_activation_energy / 1e3, abs=1.0)


LINEAR_SITE = ((0.5, 1.0, 60.0),)  # one very broad MSMR site: U(x) linear to third order at x = 0.5


def isolated(x0, sites=None, c_dl=0.0):
    """The hard-carbon preset with constant D = 2.5e-16 m^2/s, no fade, no SEI, starting uniform at x0;
    optionally a linear OCV (sites) and the double layer (c_dl, F/m^2)."""
    base = sim.load_preset("hard_carbon")
    kw = {"diffusivity_x": (), "diffusivity_values": (), "diffusivity": 2.5e-16, "fade_linear": 0.0,
          "fade_components": (), "initial_stoichiometry": x0}
    if sites:
        kw["sites"] = sites
    p = base.with_materials(**kw)
    return dataclasses.replace(p, sei_capacity=0.0, sei_slow_fraction=0.0, double_layer_capacitance=c_dl or 1e-9)


@pytest.mark.parametrize(("case", "delay", "lo", "hi"), [
    ("linear", True, 0.993, 1.0),  # mesh only: the 48 graded shells read the excursion 0.2 % high
    ("linear+dl", True, 0.993, 1.0),  # the double-layer delay fitted
    ("linear+dl", False, 0.96, 0.985),  # ... and left out: 2.3 % low
    ("curved", True, 0.99, 1.0),  # the preset OCV at x = 0.3, curvature from the relaxed points
])
def test_gitt_factors_isolated_on_the_simulator(case, delay, lo, hi):
    """40 s desodiation pulses on a particle with constant D: each physical factor alone."""
    preset = isolated(0.3, c_dl=0.2 if "dl" in case else 0.0) if case == "curved" else \
        isolated(0.5, LINEAR_SITE, c_dl=0.2 if "dl" in case else 0.0)
    p = sim.Plant(preset, noise=False)
    p.advance_open(3600.0)
    i = 30e-3 * p.cell.active_mass * 1e3
    m = p.preset.materials[0]
    cols, events, truth = gitt_on_plant(p, i, 40.0, 3)
    op = GittOperator(GittSettings(particle_radius=m.particle_radius, nominal_capacity=p.model.mp[0, 0],
                                   fit_delay=delay))
    rows = feed(op, cols, events)
    got = [r["diffusion_coefficient_cm2_s"] / (tr["diffusion_coefficient"] * 1e4) for r, tr in zip(rows, truth, strict=True)]
    for g in got[1:]:
        assert lo < g < hi, got
    if case == "curved":
        assert got[0] < 0.98  # the first pulse, OCV taken as linear: the curvature alone reads D 3 % low


def test_short_gitt_pulses_on_the_simulator(plant):
    """tau/tau_d = 0.01 (18 s pulses, records every 0.25 s): the sphere fit within 2 % and the two-term
    fit within 3 % on every valid pulse. 4 s pulses: the double-layer delay (t0 = 0.3-0.4 s) is 10 %
    of the pulse, beyond the first-order delay term; every such pulse is flagged and not valid."""
    p, i = plant
    m, q_th = material(p)
    settings = GittSettings(particle_radius=m.particle_radius, nominal_capacity=q_th)
    cols, events, truth = gitt_on_plant(p, i, 18.0, 3, dt=0.25)
    rows = feed(GittOperator(settings), cols, events)
    assert [r["valid"] for r in rows] == [False, True, True]
    for r, tr in zip(rows[1:], truth[1:], strict=True):
        assert r["tau_over_diffusion_time"] == pytest.approx(0.01, rel=0.1)
        assert r["diffusion_coefficient_cm2_s"] == pytest.approx(tr["diffusion_coefficient"] * 1e4, rel=0.02, abs=0)
        assert r["diffusion_coefficient_two_term_cm2_s"] == pytest.approx(tr["diffusion_coefficient"] * 1e4, rel=0.03, abs=0)
    cols, events, truth = gitt_on_plant(p, i, 4.0, 3, dt=0.1)
    rows = feed(GittOperator(settings), cols, events)
    assert all("double_layer_delay" in r["flags"] and not r["valid"] for r in rows)


def ici_on_plant(p, current, n, interval=300.0, interruption=10.0, dt=1.0):
    """n ICI periods on the plant as the shipped protocol runs them (hc_ici.yaml: `interval` s of
    current, then `interruption` s of rest, records every dt): columns, events and the truth at each
    interruption start."""
    t, v, i, truth, events = [], [], [], [], []

    def record(cur, h):
        v.append(p.advance_current(cur, h) if cur else p.advance_open(h))
        t.append(p.time)
        i.append(cur)

    for k in range(n):
        events.append(Event("step_start", p.time, 1, 2 * k + 1, len(t),
                            {"technique": "ici", "tags": {"role": "current"}, "current_ampere": current}))
        for _ in range(round(interval / dt)):
            record(current, dt)
        truth.append(p.truth())
        events.append(Event("step_start", p.time, 1, 2 * k + 2, len(t),
                            {"technique": "ici", "tags": {"role": "interruption"}, "current_ampere": 0.0}))
        record(0.0, 0.0)
        for _ in range(round(interruption / dt)):
            record(0.0, dt)
    events.append(Event("run_end", p.time, 1, 2 * n, len(t), {}))
    cols = {"test_time_second": np.array(t), "voltage_volt": np.array(v), "current_ampere": np.array(i)}
    return cols, events, truth


def ici_rows(p, direction, n, settings):
    """n ICI interruptions after 1 h of the same current and 1 h of rest (the hysteresis branch
    settled: the protocol's steps run one way through the sloping region), with the truth."""
    i = 30e-3 * p.cell.active_mass * 1e3
    p.advance_current(direction * i, 3600.0)
    p.advance_open(3600.0)
    cols, events, truth = ici_on_plant(p, direction * i, n)
    return cols, events, feed(IciOperator(settings), cols, events), truth


@pytest.mark.parametrize("direction", [1.0, -1.0])  # desodiation, sodiation
def test_ici_factors_on_a_constant_d_particle(direction):
    """The preset's curved OCV, double layer, kinetics and hysteresis around x = 0.25 with a constant
    D (no formation, no SEI): the sphere fit within 3 % of the truth on every interruption but the
    first (observed 1.000-1.003 desodiation, 0.981-0.993 sodiation), the two-term within 4 %, the
    one-term √t fit 30-35 % high. The first follows a rest (the 5 min step is 0.17 τ_d, not
    pseudo-steady): flagged, and not valid."""
    preset = dataclasses.replace(sim.load_preset("hard_carbon").with_materials(
        diffusivity_x=(), diffusivity_values=(), diffusivity=2.5e-16, initial_stoichiometry=0.3),
        sei_capacity=0.0, sei_slow_fraction=0.0)
    p = sim.Plant(preset, noise=False)
    m = p.preset.materials[0]
    settings = IciSettings(particle_radius=m.particle_radius, nominal_capacity=p.model.mp[0, 0])
    _cols, _events, rows, truth = ici_rows(p, direction, 6, settings)
    got = [r["diffusion_coefficient_cm2_s"] / (tr["diffusion_coefficient"] * 1e4) for r, tr in zip(rows, truth, strict=True)]
    two = [r["diffusion_coefficient_two_term_cm2_s"] / (tr["diffusion_coefficient"] * 1e4) for r, tr in zip(rows, truth, strict=True)]
    one = [r["diffusion_coefficient_one_term_cm2_s"] / (tr["diffusion_coefficient"] * 1e4) for r, tr in zip(rows, truth, strict=True)]
    assert rows[0]["flags"] == ["not_pseudo_steady"] and not rows[0]["valid"]
    assert all(r["valid"] for r in rows[1:]), [r["flags"] for r in rows]
    assert all(abs(g - 1.0) < 0.03 for g in got[1:]), got
    assert all(abs(g - 1.0) < 0.04 for g in two[1:]), two
    assert all(1.25 < g < 1.45 for g in one[1:]), one


@pytest.mark.parametrize("direction", [1.0, -1.0])  # desodiation, sodiation
def test_ici_sphere_fit_against_the_truth_channel(plant, direction):
    """The shipped ICI protocol (0.1C for 5 min, 10 s interruptions, records every 1 s) on the preset
    after formation: on every valid interruption the sphere fit within 4 % of the simulator's D and
    the two-term estimate within 3 % (observed: desodiating, sphere 1.001-1.004 and two-term
    0.983-0.985; sodiating, sphere 1.015-1.028 and two-term 0.991-0.997). Sodiating reads high
    because the preset's D falls with the mean there (d ln D/dx ≈ -3.9 above x = 0.3): over the step
    the pseudo-steady surface offset (dx/dt)·τ_d/15 grows with τ_d, so the step's potential slope s
    carries that drift on top of U'·dx/dt, and D ∝ s² reads it twice (about +3.5 % at x = 0.43,
    τ_d = 2700 s); with a constant D the fit is within 3 % (test_ici_factors_on_a_constant_d_particle).
    A window that starts at 0.5 s, within 2·t₀ of the double-layer delay, is flagged."""
    p, _ = plant
    state = p.save_state()
    try:
        m, q_th = material(p)
        settings = IciSettings(particle_radius=m.particle_radius, nominal_capacity=q_th)
        cols, events, rows, truth = ici_rows(p, direction, 5, settings)
        got = [r["diffusion_coefficient_cm2_s"] / (tr["diffusion_coefficient"] * 1e4) for r, tr in zip(rows, truth, strict=True)]
        two = [r["diffusion_coefficient_two_term_cm2_s"] / (tr["diffusion_coefficient"] * 1e4)
               for r, tr in zip(rows, truth, strict=True)]
        assert "not_pseudo_steady" in rows[0]["flags"] and not rows[0]["valid"]
        for r in rows[1:]:
            assert r["valid"], r["flags"]
            assert 0.15 < r["response_delay_second"] < 0.4  # t0 = 2 R_ct C_dl
            assert r["resistance_ohm"] > p.preset.series_resistance
        assert all(abs(g - 1.0) < 0.04 for g in got[1:]), got
        assert all(abs(g - 1.0) < 0.03 for g in two[1:]), two
        early = feed(IciOperator(dataclasses.replace(settings, t_min=0.5)), cols, events)
        assert all("double_layer_delay" in r["flags"] and not r["valid"] for r in early)
    finally:
        p.load_state(state)


def test_ici_on_the_low_voltage_plateau_is_flagged(plant):
    """On the hard-carbon plateau (x ≈ 0.6, |dU/dx| ≈ 0.09 V) the current step's slope says nothing
    about D: every interruption is flagged `plateau`."""
    p, i = plant
    state = p.save_state()
    try:
        m, q_th = material(p)
        while p.truth()["mean_stoichiometry"] < 0.6:
            p.advance_current(-i, 600.0)
        cols, events, truth = ici_on_plant(p, -i, 3)
        assert all(abs(tr["ocv_slope"]) < 0.12 for tr in truth)
        rows = feed(IciOperator(IciSettings(particle_radius=m.particle_radius, nominal_capacity=q_th)), cols, events)
        assert all("plateau" in r["flags"] and not r["valid"] for r in rows), [r["flags"] for r in rows]
    finally:
        p.load_state(state)
