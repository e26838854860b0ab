"""CV: branches, peaks, b-values and the Dunn split on analytic k1·v + k2·√v currents."""

import numpy as np
import pytest

from cyclerctl.analysis.base import Event
from cyclerctl.analysis.cv import CvOperator, CvSettings, split_branches

E = np.round(np.arange(0.0, 1.0 + 1e-9, 1e-3), 9)
RATES = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3]


def run_cv(currents_up, currents_down, settings=None):
    """One CV step per scan rate: 0 -> 1 V -> 0 V with the given branch currents."""
    op = CvOperator(settings)
    rows, seq = [], 0
    for n, v in enumerate(RATES):
        V = np.r_[E, E[::-1][1:]]
        cur = np.r_[currents_up(v), currents_down(v)[::-1][1:]]
        t = np.arange(V.size) * 1e-3 / v
        rows += op.feed_event(Event("step_start", 0.0, 1, n + 1, seq,
                                    {"technique": "cv", "step_type": "CV_SWEEP", "scan_rate_volt_per_second": v}))
        rows += op.feed_samples({"test_time_second": t, "voltage_volt": V, "current_ampere": cur})
        seq += V.size
        rows += op.feed_event(Event("step_end", float(t[-1]), 1, n + 1, seq, {}))
    return op, [r.data for r in rows]


def gauss(center, width=0.05):
    return np.exp(-(((E - center) / width) ** 2))


def test_dunn_split_recovers_k1_and_k2_within_1_percent():
    k1 = 2e-3 * (1 + 0.5 * E)  # F (capacitive current per V/s)
    k2 = 3e-4 * gauss(0.5) + 1e-5  # A (V/s)^-1/2
    op, rows = run_cv(lambda v: k1 * v + k2 * np.sqrt(v), lambda v: -(k1 * v + k2 * np.sqrt(v)))
    kin = [r for r in rows if r["record"] == "kinetics"][-1]
    anodic = next(d for d in kin["dunn"] if d["direction"] == "anodic")
    pot = np.array(anodic["potential_volt"])
    assert np.allclose(anodic["k1_farad"], np.interp(pot, E, k1), rtol=0.01)
    assert np.allclose(anodic["k2_ampere_s_half_v_half"], np.interp(pot, E, k2), rtol=0.01)
    # capacitive fraction at each rate from the true k1, k2
    for v, frac in zip(RATES, anodic["capacitive_fraction"], strict=True):
        true = np.sum(k1 * v) / np.sum(k1 * v + k2 * np.sqrt(v))
        assert frac == pytest.approx(true, rel=0.01)


def test_b_values_of_power_law_peaks_and_peak_positions():
    op, rows = run_cv(lambda v: 1e-2 * v**0.62 * gauss(0.6) + 1e-9,
                      lambda v: -(1e-2 * v**0.5 * gauss(0.3) + 1e-9))
    kin = [r for r in rows if r["record"] == "kinetics"][-1]
    peaks = {p["direction"]: p for p in kin["peaks"]}
    assert peaks["anodic"]["b_value"] == pytest.approx(0.62, abs=0.01)
    assert peaks["cathodic"]["b_value"] == pytest.approx(0.50, abs=0.01)
    assert abs(peaks["anodic"]["potential_volt"] - 0.6) <= 1e-3  # within one 1 mV bin
    assert abs(peaks["cathodic"]["potential_volt"] - 0.3) <= 1e-3
    assert peaks["anodic"]["peak_shift_volt_per_decade"] == pytest.approx(0.0, abs=1e-3)
    # b = 0.62 is not diffusion control: Randles–Sevcik is refused with a flag
    assert peaks["anodic"]["randles_sevcik_diffusion_coefficient_cm2_s"] is None
    assert "randles_sevcik_not_applicable" in peaks["anodic"]["flags"]
    branches = [r for r in rows if r["record"] == "branch"]
    assert len(branches) == 2 * len(RATES)
    assert {b["direction"] for b in branches} == {"anodic", "cathodic"}


def test_randles_sevcik_where_b_is_one_half():
    area, conc = 1.0, 1e-5
    d_true = 1e-9
    ip = lambda v: 2.69e5 * area * conc * np.sqrt(d_true) * np.sqrt(v)  # noqa: E731
    _, rows = run_cv(lambda v: ip(v) * gauss(0.6) + 1e-12, lambda v: -(ip(v) * gauss(0.4) + 1e-12),
                     CvSettings(area_cm2=area, concentration_mol_cm3=conc))
    kin = [r for r in rows if r["record"] == "kinetics"][-1]
    anodic = next(p for p in kin["peaks"] if p["direction"] == "anodic")
    assert anodic["randles_sevcik_diffusion_coefficient_cm2_s"] == pytest.approx(d_true, rel=0.01)


def test_branch_split_ignores_noise_below_the_hysteresis():
    rng = np.random.default_rng(0)
    v = np.r_[np.linspace(0, 1, 500), np.linspace(1, 0, 500)] + 2e-4 * rng.standard_normal(1000)
    b = split_branches(v, 2e-3)
    assert [d for _, _, d in b] == [1, -1]


def test_peak_shift_of_plus_and_minus_30_mv_per_decade():
    """The peak potential moving with log(scan rate), anodic up and cathodic down by 30 mV per decade
    (a quasi-reversible couple): the shift per decade within 1 mV/decade."""
    shift = 0.030  # V per decade of scan rate

    def anodic(v):
        return 1e-2 * np.sqrt(v) * gauss(0.6 + shift * np.log10(v / 1e-3)) + 1e-9

    def cathodic(v):
        return -(1e-2 * np.sqrt(v) * gauss(0.3 - shift * np.log10(v / 1e-3)) + 1e-9)

    _, rows = run_cv(anodic, cathodic)
    kin = [r for r in rows if r["record"] == "kinetics"][-1]
    peaks = {p["direction"]: p for p in kin["peaks"]}
    assert len(kin["peaks"]) == 2
    np.testing.assert_allclose(peaks["anodic"]["scan_rates_volt_per_second"], RATES)
    np.testing.assert_allclose(peaks["anodic"]["peak_potentials_volt"], 0.6 + shift * np.log10(np.array(RATES) / 1e-3),
                               atol=1e-3)  # within one 1 mV bin at every rate
    assert peaks["anodic"]["peak_shift_volt_per_decade"] == pytest.approx(shift, abs=1e-3)
    assert peaks["cathodic"]["peak_shift_volt_per_decade"] == pytest.approx(-shift, abs=1e-3)
    assert peaks["anodic"]["b_value"] == pytest.approx(0.5, abs=0.01)  # the moving peak keeps its height
