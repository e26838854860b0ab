"""Each shipped preset reproduces the published numbers its file states, within the stated tolerance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import find_peaks

from cyclerctl.program import Record, Sweep
from cyclerctl.sim.cycling import cycle
from cyclerctl.sim.model import CellModel
from cyclerctl.sim.steps import run_step


def mah_g(model: CellModel, charge: float) -> float:
    return charge / 3.6 / (model.cell.active_mass * 1e3)


def test_hard_carbon_first_cycle_at_30_mA_g():
    m = CellModel("hard_carbon")
    i = 30e-3 * m.cell.active_mass * 1e3  # 30 mA/g
    d, c = cycle(m, i, i, (0.0, 2.5), every=10.0, keep=True)
    first_sodiation = mah_g(m, d.charge)
    assert 364.0 <= first_sodiation <= 373.5  # 364.45 (results) / 373.3 (abstract)
    assert c.charge / d.charge == pytest.approx(0.8181, abs=0.01)  # ICE 81.81 %
    # sloping capacity above 0.1 V, plateau below 0.1 V (desodiation)
    below = np.interp(0.1, c.voltage, c.capacity) / c.charge
    assert 0.4 <= below <= 0.7
    assert np.all(np.diff(c.voltage[1:]) > -1e-6)  # desodiation: voltage rises monotonically


def test_hard_carbon_200_cycles_at_0p1C():
    m = CellModel("hard_carbon")
    i = 30e-3 * m.cell.active_mass * 1e3
    caps = {}
    for k in range(1, 201):
        _d, c = cycle(m, i, i, (0.0, 2.5), every=120.0)
        if k in (21, 200):
            caps[k] = mah_g(m, c.charge)
    assert caps[200] == pytest.approx(203.5, rel=0.10)
    assert caps[200] / caps[21] == pytest.approx(0.972, abs=0.01)


def test_nano_sn_ice_and_anodic_peaks():
    m = CellModel("nano_sn")
    i = 0.08 * m.cell.active_mass * 1e3
    d, c = cycle(m, i, i, m.preset.window, every=30.0)
    assert c.charge / d.charge == pytest.approx(0.801, abs=0.01)  # ICE 80.1 %
    cv = CellModel("nano_sn")
    lo, hi = cv.preset.window
    sweep = Sweep(step_id=0, name="cv", start=hi, vertices=(lo,), scan_rate=0.2e-3, cycles=2,
                  record=Record(every=None, voltage_change=1e-3))
    chunks = list(run_step(cv, sweep, 0.0))
    v = np.concatenate([ch.columns["voltage_volt"] for ch in chunks])
    cur = np.concatenate([ch.columns["current_ampere"] for ch in chunks])
    seg = np.concatenate([ch.columns["sweep_segment"] for ch in chunks])
    anodic = seg == 3  # second cycle, desodiation sweep
    peaks, _ = find_peaks(cur[anodic], prominence=0.05 * cur[anodic].max())
    np.testing.assert_allclose(np.sort(v[anodic][peaks]), [0.22, 0.57, 0.71], atol=0.02)


def test_sn_hc_capacity_ice_and_rate_table():
    m = CellModel("sn_hc")
    mass = m.cell.active_mass * 1e3
    win = m.preset.window
    d, c = cycle(m, 0.08 * mass, 0.08 * mass, win, every=30.0)
    assert mah_g(m, c.charge) == pytest.approx(613, rel=0.03)
    assert c.charge / d.charge == pytest.approx(0.831, abs=0.01)
    published = {0.17: 540, 0.42: 533, 0.84: 527, 1.7: 507, 4.2: 449, 8.4: 186}
    for rate, cap in published.items():
        for _ in range(5):
            d, c = cycle(m, rate * mass, rate * mass, win, every=30.0)
        assert mah_g(m, c.charge) == pytest.approx(cap, rel=0.10), rate


@pytest.mark.parametrize("name,ea", [("hard_carbon", 13.94e3), ("nano_sn", 12.11e3), ("sn_hc", 10.47e3)])
def test_activation_energies_as_given(name, ea):
    m = CellModel(name)
    assert {mat.charge_transfer_activation_energy for mat in m.preset.materials} == {ea}


def test_sn_hc_long_cycling_at_1p7_A_g():
    # two activation cycles at 0.08 A/g, then 12,000 cycles at 1.7 A/g (the whole run, ~2 M samples)
    m = CellModel("sn_hc")
    mass = m.cell.active_mass * 1e3
    win = m.preset.window
    for _ in range(2):
        cycle(m, 0.08 * mass, 0.08 * mass, win, every=30.0)
    caps = {}
    for k in range(1, 12_001):
        _d, c = cycle(m, 1.7 * mass, 1.7 * mass, win, every=30.0)
        if k in (400, 12_000):
            caps[k] = mah_g(m, c.charge)
    assert caps[400] == pytest.approx(374, rel=0.10)
    assert caps[12_000] == pytest.approx(270, rel=0.10)
    assert caps[12_000] / caps[400] == pytest.approx(0.72, abs=0.05)
