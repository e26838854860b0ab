"""Variable-temperature EIS through the simulated Espec chamber and the EmStat: the chamber settles at
each temperature while the cell rests, the spectra match the direct (in-process) path at the same cell
temperature, and the Arrhenius fits of the fitted resistances give the preset's activation energies:
8 kJ/mol for the series resistance (ln R_s vs 1/T) and 13.94 kJ/mol for charge transfer (ln(R_ct/T)
vs 1/T). In 100 kHz-0.1 Hz the charge-transfer arc (R_ct*C_dl ~ 0.1 s, apex near 1.5 Hz) shows no
semicircle of its own: the diffusion impedance at that frequency (~80 ohm) exceeds R_ct (~54 ohm), so
the fit has to find it in the shape of the tail (circuits.initial_guess)."""

from __future__ import annotations

import numpy as np
import pytest
from driverkit import run_steps
from instrument_servers import emstat_pty, espec_server, make_plant

from cyclerctl.analysis.arrhenius import activation_energy
from cyclerctl.analysis.eis import EisSettings, analyze_spectrum
from cyclerctl.clock import WallClock
from cyclerctl.drivers.emstat import EmStatChannel
from cyclerctl.drivers.registry import open_thermostat
from cyclerctl.drivers.thermostat_channel import ThermostatChannel
from cyclerctl.program import Impedance, Record, SetTemperature

SPEED = 2000.0
TEMPERATURES = (288.15, 298.15, 308.15, 318.15)
EA_PRESET = 8.0e3  # J/mol, series_resistance_activation_energy of the hard_carbon preset (sim/hard_carbon.yaml)
EA_CT_PRESET = 13.94e3  # J/mol, its charge_transfer_activation_energy


def program():
    steps = []
    for k, t in enumerate(TEMPERATURES):
        steps.append(SetTemperature(step_id=2 * k, name=f"Set {t - 273.15:.0f} degC", temperature=t, tolerance=0.3,
                                    stable_for=1200.0, timeout=4 * 3600.0, record=Record(every=300.0)))
        steps.append(Impedance(step_id=2 * k + 1, name="EIS at OCV", freq_start=1e5, freq_stop=0.1,
                               points_per_decade=8, amplitude=5e-3))
    return steps


@pytest.fixture(scope="module")
def vt_run():
    import asyncio

    async def go():
        plant = make_plant()
        with espec_server(SPEED, plant=plant) as (_c, address), emstat_pty(SPEED, plant=plant) as (_e, port):
            ch = ThermostatChannel(EmStatChannel(port, WallClock(SPEED), interval=10.0),
                                   open_thermostat(f"espec:{address}", WallClock(SPEED)), poll_period=120.0)
            await ch.open()
            cell_temperatures = []
            results = []
            for step in program():
                [r] = await run_steps(ch, [step])
                results.append(r)
                if isinstance(step, Impedance):
                    cell_temperatures.append(plant.temperature)
            await ch.close()
            return results, cell_temperatures

    return asyncio.run(go())


def test_each_temperature_is_reached_and_held_before_the_spectrum(vt_run):
    results, cell_t = vt_run
    for k, t in enumerate(TEMPERATURES):
        settle = results[2 * k]["columns"]
        assert abs(settle["temperature_t1_celsius"][-1] - (t - 273.15)) <= 0.3
        assert abs(cell_t[k] - t) < 0.5  # the cell followed the chamber air


def _spectrum(cols):
    return cols["frequency_hertz"], cols["real_impedance_ohm"] + 1j * cols["imaginary_impedance_ohm"]


def test_spectra_match_the_direct_path_at_each_temperature(vt_run):
    from cyclerctl.sim.plant import Plant

    results, cell_t = vt_run
    for k, t in enumerate(cell_t):
        f, z = _spectrum(results[2 * k + 1]["columns"])
        direct = Plant("hard_carbon", temperature=t, noise=False).impedance(f)
        np.testing.assert_allclose(np.abs(z - direct) / np.abs(direct), 0.0, atol=0.01)


def test_arrhenius_of_the_series_resistance(vt_run):
    results, cell_t = vt_run
    r0 = []
    for k in range(len(TEMPERATURES)):
        f, z = _spectrum(results[2 * k + 1]["columns"])
        r0.append(analyze_spectrum(f, z, EisSettings())["series_resistance_ohm"])
    assert all(a > b for a, b in zip(r0, r0[1:], strict=False))  # lower resistance when warmer
    ea, _se = activation_energy(np.array(cell_t), np.array(r0))
    assert abs(ea - EA_PRESET) <= 1e3, f"activation energy {ea / 1e3:.2f} kJ/mol, preset {EA_PRESET / 1e3} kJ/mol"


def test_arrhenius_of_the_charge_transfer_resistance(vt_run):
    results, cell_t = vt_run
    fits = []
    for k in range(len(TEMPERATURES)):
        f, z = _spectrum(results[2 * k + 1]["columns"])
        fits.append(analyze_spectrum(f, z, EisSettings()))
    assert {r["best_circuit"] for r in fits} == {"R0-p(R1,C1)-p(R2-Sph1,C2)"}  # counter electrode, then the WE
    t = np.array(cell_t)
    r_ct = np.array([r["charge_transfer_resistance_ohm"] for r in fits])
    assert np.all(r_ct > 10.0) and np.all(np.diff(r_ct) < 0)  # resolved (not ~0), and faster when warmer
    ea, _se = activation_energy(t, r_ct / t)  # R_ct = RT/(F i0 A): the RT correction
    assert abs(ea - EA_CT_PRESET) <= 1e3, f"charge-transfer E_a {ea / 1e3:.2f} kJ/mol, preset 13.94 kJ/mol"
    naive, _ = activation_energy(t, r_ct)
    assert naive < ea - 2e3  # without the correction it reads ~R*T low
