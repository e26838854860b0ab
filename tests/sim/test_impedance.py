"""The simulated impedance is the linearised model: checked against the analytic Randles circuit with
a spherical diffusion element of the same parameters."""

from __future__ import annotations

import numpy as np
import pytest

from cyclerctl.sim.model import CellModel
from cyclerctl.sim.particle import sphere_diffusion_impedance


def _randles(m: CellModel, f: np.ndarray) -> np.ndarray:
    p = m.parts()
    w = 2 * np.pi * f
    y = 1j * w * p["double_layer_capacitance"]
    for d in p["materials"]:
        tau = d["particle_radius"] ** 2 / d["diffusivity"]
        zd = sphere_diffusion_impedance(w, tau, d["ocv_slope"], d["capacity"])
        y = y + 1 / (d["charge_transfer_resistance"] + zd)
    zce = 1 / (1 / p["counter_charge_transfer_resistance"] + 1j * w * p["counter_double_layer_capacitance"])
    return p["series_resistance"] + 1 / y + zce


@pytest.mark.parametrize("preset", ["hard_carbon", "sn_hc"])
def test_impedance_matches_analytic_sphere_randles(preset):
    m = CellModel(preset)
    mass = m.cell.active_mass * 1e3
    m.advance(0, -0.05 * mass, 3600.0)  # partly sodiated
    m.advance(0, 0.0, 6 * 3600.0)  # rested
    f = np.logspace(5, -3, 81)
    z = m.impedance(f)
    za = _randles(m, f)
    rel = np.abs(z - za) / np.abs(za)
    assert rel.max() < 0.005, rel.max()
    # capacitive convention and a real high-frequency limit near R_s
    assert np.all(z.imag < 0)
    assert abs(z[0].real - m.parts()["series_resistance"]) < 0.05 * abs(z[0])


def test_impedance_charge_transfer_follows_arrhenius():
    # R_ct = RT/(F i0 A): ln(R_ct/T) vs 1/T has slope Ea/R exactly
    temps = np.array([263.15, 278.15, 298.15, 318.15])
    rct = []
    for t in temps:
        m = CellModel("hard_carbon", temperature=t)
        rct.append(m.parts()["materials"][0]["charge_transfer_resistance"])
    slope = np.polyfit(1 / temps, np.log(np.array(rct) / temps), 1)[0]
    ea = slope * 8.314462618
    assert ea == pytest.approx(13.94e3, rel=1e-6)
