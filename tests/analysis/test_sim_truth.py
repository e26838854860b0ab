"""The estimators held to the simulator's ground truth (cyclerctl.sim Plant, hard-carbon preset, no
noise) at x ≈ 0.3 in the sloping region, after one formation sodiation."""


import numpy as np
import pytest

from cyclerctl.analysis.arrhenius import activation_energy
from cyclerctl.analysis.eis import EisSettings, analyze_spectrum
from cyclerctl.analysis.gitt import GittSettings, analyze_pulse

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
    p, _ = plant
    m, q_th = material(p)
    tr = p.truth()
    out = analyze_spectrum(FREQ, p.impedance(FREQ),
                           EisSettings(particle_radius=m.particle_radius, ocv_slope_per_coulomb=tr["ocv_slope"] / q_th))
    assert out["best_circuit"] == "R0-p(R1,C1)-p(R2-Sph1,C2)"
    assert out["linkk_max_residual"] < 0.005
    tau_true = m.particle_radius**2 / tr["diffusion_coefficient"]
    assert out["diffusion_time_second"] == pytest.approx(tau_true, rel=0.02)
    assert out["diffusion_coefficient_cm2_s"] == pytest.approx(tr["diffusion_coefficient"] * 1e4, rel=0.05)
    assert out["series_resistance_ohm"] == pytest.approx(p.preset.series_resistance, rel=0.02)


def test_gitt_sphere_fit_against_the_truth_channel(plant):
    """A 40 s desodiation pulse and a 3.4 h rest. The sphere fit reads the simulator's D about 6 % low
    here (its two-term fit 8 %); the EIS of the same state agrees with the truth to 0.2 %, so the gap
    is in the time-domain response, not in the estimator (see docs/analysis.md)."""
    p, i = plant
    m, q_th = material(p)
    d_true = p.truth()["diffusion_coefficient"]
    e_before = p.advance_open(0.0)
    t = [0.0]
    e = [p.advance_current(i, 0.0)]
    for k in range(1, 81):
        e.append(p.advance_current(i, 0.5))
        t.append(0.5 * k)
    rt, re_, s = [], [], 0.0
    for dt in np.r_[np.ones(60), np.full(200, 60.0)]:
        s += dt
        re_.append(p.advance_open(dt))
        rt.append(s)
    res = analyze_pulse(np.array(t), np.array(e), i, e_before, re_[-1],
                        GittSettings(particle_radius=m.particle_radius, nominal_capacity=q_th),
                        np.array(rt), np.array(re_))
    assert "not_relaxed" not in res["flags"] and "plateau" not in res["flags"]
    assert res["diffusion_coefficient_cm2_s"] == pytest.approx(d_true * 1e4, rel=0.10)
    assert res["ohmic_resistance_ohm"] > p.preset.series_resistance


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
