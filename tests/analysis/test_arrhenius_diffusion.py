"""Activation energy of diffusion from D(T): EIS spectra (D from σ) and GITT series (sphere-fit D) at
several temperatures with an Arrhenius D(T), streamed through the operators."""

import numpy as np
import pytest

from cyclerctl.analysis.arrhenius import ArrheniusOperator
from cyclerctl.analysis.base import GAS_CONSTANT, Event
from cyclerctl.analysis.eis import EisOperator, EisSettings
from cyclerctl.analysis.live import operators_for
from cyclerctl.analysis.offline import run_stream
from cyclerctl.analysis.synthetic import gitt_pulse_train, randles_sphere_impedance
from cyclerctl.program import Cell

RP = 3.5e-6
Q_TH = 0.6 * 3.6
SLOPE = -0.5  # dU/dx, V
T_REF = 298.15


def d_of_t(kelvin, ea, d_ref):
    return d_ref * np.exp(-ea / GAS_CONSTANT * (1 / kelvin - 1 / T_REF))


def stream_steps(steps):
    """("event", step_start), ("samples", cols), ("event", step_end) per (data, columns, duration) step,
    the columns' times from the step start."""
    items, t0, seq = [], 0.0, 0
    for k, (data, cols, duration) in enumerate(steps):
        n = cols["test_time_second"].size
        c = dict(cols, test_time_second=cols["test_time_second"] + t0, cycle_count=np.ones(n),
                 step_count=np.full(n, k + 1.0))
        items.append(("event", Event("step_start", t0, 1, k + 1, seq, data)))
        items.append(("samples", c))
        seq += n
        t0 += duration
        items.append(("event", Event("step_end", t0, 1, k + 1, seq, {"reason": "complete"})))
    items.append(("event", Event("run_end", t0, 1, len(steps), seq, {"status": "completed"})))
    return items


def test_diffusion_activation_energy_from_eis_d_of_t_within_1_kj_mol():
    """Spectra at five temperatures, τ_d(T) = R_p²/D(T), D Arrhenius in 35 kJ/mol, 0.1 % noise;
    dU/dQ given: ln D(σ) against 1/T gives E_a within ±1 kJ/mol."""
    temps = np.array([10.0, 17.5, 25.0, 32.5, 40.0]) + 273.15
    d = d_of_t(temps, 35e3, 1e-15)
    f = np.logspace(5, -2, 57)
    steps = []
    for k, (tk, dk) in enumerate(zip(temps, d, strict=True)):
        z = randles_sphere_impedance(f, r_s=5.0, r_ct=60.0, c_dl=20e-6, ocv_slope=SLOPE, tau_d=RP * RP / dk, q_th=Q_TH)
        rng = np.random.default_rng(k)
        z = z * (1 + 0.001 * (rng.standard_normal(f.size) + 1j * rng.standard_normal(f.size)) / np.sqrt(2))
        steps.append(({"technique": "eis", "step_type": "EIS"}, {
            "test_time_second": np.arange(f.size, dtype=float), "voltage_volt": np.full(f.size, 0.5),
            "current_ampere": np.zeros(f.size), "frequency_hertz": f, "real_impedance_ohm": z.real,
            "imaginary_impedance_ohm": z.imag, "temperature_t1_celsius": np.full(f.size, tk - 273.15)}, f.size))
    eis = EisOperator(EisSettings(particle_radius=RP, ocv_slope_per_coulomb=SLOPE / Q_TH))
    out = run_stream([eis, ArrheniusOperator(eis)], stream_steps(steps))
    np.testing.assert_allclose([r.data["diffusion_coefficient_cm2_s"] for r in out["eis"]], d * 1e4, rtol=0.02)
    last = out["arrhenius"][-1].data
    assert len(out["arrhenius"]) == 4 and last["source"] == "eis"
    np.testing.assert_allclose(last["diffusion_temperature_kelvin"], temps, rtol=1e-12)
    assert last["diffusion_activation_energy_kj_mol"] == pytest.approx(35.0, abs=1.0)
    assert 0 < last["diffusion_activation_energy_stderr_kj_mol"] < 1.0


def gitt_steps(kelvin, d, u0):
    """A GITT series of three pulses (τ/τ_d = 0.01 at 25 degC) at `kelvin`, as (step data, columns)."""
    tau_d = 6000.0
    pulse = 0.01 * tau_d
    rest = 6 * RP * RP / d
    cols, events = gitt_pulse_train(d=d, radius=RP, q_th=3.6, ocv_slope=-1.0, current=-0.01 * 3.6 / pulse,
                                    pulse=pulse, rest=rest, n_pulses=3, u0=u0, r_ohm=20.0, dt_pulse=0.3,
                                    noise=1e-4, seed=int(kelvin))
    starts = [e for e in events if e.kind == "step_start"][1:]  # without the opening rest sample
    bounds = [e.sample_seq for e in starts] + [cols["test_time_second"].size]
    out = []
    for e, a, b in zip(starts, bounds[:-1], bounds[1:], strict=True):
        c = {k: cols[k][a:b] for k in ("test_time_second", "voltage_volt", "current_ampere")}
        c["test_time_second"] = c["test_time_second"] - e.test_time_second
        c["temperature_t1_celsius"] = np.full(b - a, kelvin - 273.15)
        out.append((e.data, c, pulse if e.data["tags"]["role"] == "pulse" else rest))
    x_end = 3 * 0.01 * 3.6 / 3.6  # the stoichiometry the series moved (−I·τ·n/Q)
    return out, u0 - 1.0 * x_end


def test_gitt_d_of_t_reaches_the_arrhenius_rows_with_ea_within_1_kj_mol():
    """GITT series at four temperatures (D Arrhenius in 40 kJ/mol, 0.1 mV noise), each after a temperature step,
    through the default operators: the GITT rows carry their temperature, the Arrhenius operator
    fits ln D of the valid pulses against 1/T."""
    temps = np.array([15.0, 25.0, 35.0, 45.0]) + 273.15
    d = d_of_t(temps, 40e3, (RP * RP / 6000.0))
    steps, u0 = [], 1.0
    for tk, dk in zip(temps, d, strict=True):
        steps.append(({"technique": "temperature", "step_type": "REST"}, {
            "test_time_second": np.arange(0.0, 600.0, 60.0), "voltage_volt": np.full(10, u0),
            "current_ampere": np.zeros(10), "temperature_t1_celsius": np.full(10, tk - 273.15)}, 600.0))
        series, u0 = gitt_steps(tk, dk, u0)
        steps += series
    out = run_stream(operators_for(Cell(particle_radius=RP, active_mass=1e-3, nominal_specific_capacity=3600.0)), stream_steps(steps))
    gitt = [r.data for r in out["gitt"]]
    assert len(gitt) == 12
    # the first pulse of each series: a new curvature chain after the temperature step
    assert [r["valid"] for r in gitt] == [False, True, True] * 4
    assert all("ocv_curvature_unknown" in r["flags"] for r in gitt[::3])
    for r, tk in zip(gitt, np.repeat(temps, 3), strict=True):
        assert r["temperature_kelvin"] == pytest.approx(tk, rel=1e-12)
    arr = [r.data for r in out["arrhenius"] if r.data["source"] == "gitt"]
    assert len(arr) == 6  # each valid pulse once two temperatures are known
    last = arr[-1]
    np.testing.assert_allclose(last["diffusion_temperature_kelvin"], temps, rtol=1e-12)
    np.testing.assert_allclose(last["diffusion_coefficient_cm2_s"], d * 1e4, rtol=0.02)
    assert last["diffusion_activation_energy_kj_mol"] == pytest.approx(40.0, abs=1.0)
    assert 0 < last["diffusion_activation_energy_stderr_kj_mol"] < 1.0
