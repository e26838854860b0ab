"""Analytic responses with known truth, for tests, benchmarks and teaching.

Each generator returns journal-like columns (BDF names, SI) plus the events an engine would write,
so the same data can go through the operators, a journal file or a BDF file.
"""

from __future__ import annotations

import math

import numpy as np

from .base import FARADAY, GAS_CONSTANT, Event
from .diffusion import sphere_h


def gitt_pulse_train(*, d: float, radius: float, q_th: float, ocv_slope: float, current: float,
                     pulse: float, rest: float, n_pulses: int, u0: float = 1.0, r_ohm: float = 0.0,
                     dt_pulse: float = 0.5, dt_rest: float = 30.0, noise: float = 0.0, seed: int = 0,
                     ) -> tuple[dict[str, np.ndarray], list[Event]]:
    """GITT on one sphere with constant D and a linear OCV U = u0 + ocv_slope·x (exact Crank series);
    x rises by −I·t/q_th (sodiation, I < 0, fills the sites).

    Each pulse: `pulse` s at `current` A sampled every `dt_pulse` s, then `rest` s at zero current.
    Returns (columns, events) with step_start events (technique "gitt", role pulse/rest)."""
    tau_d = radius**2 / d
    rng = np.random.default_rng(seed)
    t_all, v_all, i_all, st_all, sc_all = [], [], [], [], []
    events: list[Event] = []
    t0, x_bulk, step = 0.0, 0.0, 0
    events.append(Event("step_start", 0.0, 1, step, 0, {"technique": "rest", "step_type": "REST"}))
    t_all.append(np.array([0.0]))
    v_all.append(np.array([u0]))
    i_all.append(np.array([0.0]))
    st_all.append(np.array([0.0]))
    sc_all.append(np.array([step]))
    n = 1
    for _ in range(n_pulses):
        tp = np.arange(0.0, pulse + 1e-9, dt_pulse)
        tr = np.r_[np.arange(dt_pulse, min(60.0, rest), dt_pulse), np.arange(60.0, rest + 1e-9, dt_rest)]
        k = -current * tau_d / (3 * q_th)  # sodiation (I < 0) raises x, and U falls
        xs_p = x_bulk + k * sphere_h(tp / tau_d)
        xs_r = x_bulk + k * (sphere_h((pulse + tr) / tau_d) - sphere_h(tr / tau_d))
        for role, tt, xs, cur in (("pulse", tp, xs_p, current), ("rest", tr, xs_r, 0.0)):
            step += 1
            t_start = t0 if role == "pulse" else t0 + pulse
            events.append(Event("step_start", t_start, 1, step, n,
                                {"technique": "gitt", "tags": {"role": role},
                                 "step_type": "CC_DCHG" if cur < 0 else ("CC_CHG" if cur > 0 else "REST"),
                                 "current_ampere": cur}))
            v = u0 + ocv_slope * xs + cur * r_ohm
            if role == "pulse":
                v = v.copy()
                v[0] = u0 + ocv_slope * x_bulk + cur * r_ohm  # first record just after the jump
            t_all.append(t_start + tt)
            v_all.append(v + noise * rng.standard_normal(v.size))
            i_all.append(np.full(tt.size, cur))
            st_all.append(tt)
            sc_all.append(np.full(tt.size, step))
            n += tt.size
        x_bulk -= current * pulse / q_th
        t0 += pulse + rest
    cols = {
        "test_time_second": np.concatenate(t_all), "voltage_volt": np.concatenate(v_all),
        "current_ampere": np.concatenate(i_all), "step_time_second": np.concatenate(st_all),
        "step_count": np.concatenate(sc_all).astype(np.float64),
    }
    nn = cols["test_time_second"].size
    cols["cycle_count"] = np.ones(nn)
    cols["step_id"] = cols["step_count"].copy()
    events.append(Event("run_end", float(cols["test_time_second"][-1]), 1, step, nn, {"status": "completed"}))
    return cols, events


def randles_sphere_impedance(freq: np.ndarray, *, r_s: float, r_ct: float, c_dl: float, ocv_slope: float,
                             tau_d: float, q_th: float) -> np.ndarray:
    """Z(ω) = R_s + [jωC_dl + 1/(R_ct + Z_d)]⁻¹ with the finite spherical diffusion impedance
    Z_d = (−dU/dx)·τ_d/(3Q_th)·tanh√s/(√s − tanh√s), s = jωτ_d (reflective centre)."""
    w = 2 * np.pi * np.asarray(freq)
    s = np.sqrt(1j * w * tau_d)
    th = np.tanh(s)
    z_d = (-ocv_slope) * tau_d / (3 * q_th) * th / (s - th)
    return r_s + 1.0 / (1j * w * c_dl + 1.0 / (r_ct + z_d))


def cv_dunn(potential: np.ndarray, scan_rates: list[float], k1: np.ndarray, k2: np.ndarray) -> dict[float, np.ndarray]:
    """i(V) = k1(V)·v + k2(V)·√v for every scan rate v (the Dunn model, exact)."""
    return {v: k1 * v + k2 * np.sqrt(v) for v in scan_rates}


def arrhenius_rct(temperatures: np.ndarray, *, ea: float, r_ct_ref: float, t_ref: float = 298.15) -> np.ndarray:
    """R_ct(T) = R T/(F i₀(T) A) with i₀ Arrhenius in E_a: R_ct = R_ref·(T/T_ref)·exp(E_a/R (1/T − 1/T_ref))."""
    t = np.asarray(temperatures, dtype=np.float64)
    return r_ct_ref * (t / t_ref) * np.exp(ea / GAS_CONSTANT * (1 / t - 1 / t_ref))


def sine_response(freq: np.ndarray, z: np.ndarray, *, amplitude: float, samples_per_period: int, periods: int,
                  settle_periods: int = 1, galvanostatic: bool = True, t_start: float = 0.0,
                  v_dc: float = 0.0, i_dc: float = 0.0, drift: float = 0.0) -> dict[str, np.ndarray]:
    """The sampled steady-state response of an impedance `z` (one value per frequency of `freq`) to a
    sine of rms `amplitude` (A galvanostatic, V potentiostatic): `settle_periods` + `periods` periods
    of `samples_per_period` uniform samples per frequency, in sweep order, the DC voltage moving by
    `drift` V/s. Columns of the journal (test time, voltage, current, frequency)."""
    t, v, i, ff = [], [], [], []
    t0 = t_start
    m = (settle_periods + periods) * samples_per_period
    for fk, zk in zip(np.asarray(freq, float), np.asarray(z, complex), strict=True):
        tau = np.arange(m) / (fk * samples_per_period)
        phase = 2 * np.pi * fk * tau
        tt = t0 + tau
        if galvanostatic:
            ii = i_dc + math.sqrt(2) * amplitude * np.sin(phase)
            vv = v_dc + drift * tt + math.sqrt(2) * amplitude * abs(zk) * np.sin(phase + np.angle(zk))
        else:
            vv = v_dc + drift * tt + math.sqrt(2) * amplitude * np.sin(phase)
            ii = i_dc + math.sqrt(2) * amplitude / abs(zk) * np.sin(phase - np.angle(zk))
        t.append(tt)
        v.append(vv)
        i.append(ii)
        ff.append(np.full(m, fk))
        t0 = float(tt[-1]) + 1.0 / (fk * samples_per_period)
    return {"test_time_second": np.concatenate(t), "voltage_volt": np.concatenate(v),
            "current_ampere": np.concatenate(i), "frequency_hertz": np.concatenate(ff)}


def mixed_stream(seed: int = 7) -> list[tuple[str, object]]:
    """GCD cycles (the first at a lower current), a GITT train, CV at two scan rates and an EIS step,
    as one journal-ordered stream of ("event", Event) and ("samples", columns) items."""
    items: list = []
    rng = np.random.default_rng(seed)
    t0, seq, step = 0.0, 0, 0

    def add(cols, data, cyc):
        nonlocal t0, seq, step
        step += 1
        n = cols["voltage_volt"].size
        cols = {k: np.asarray(v, float) for k, v in cols.items()}
        cols["test_time_second"] = cols["test_time_second"] + t0
        cols["cycle_count"] = np.full(n, float(cyc))
        cols["step_count"] = np.full(n, float(step))
        items.append(("event", Event("step_start", t0, cyc, step, seq, data)))
        items.append(("samples", cols))
        seq += n
        t0 = float(cols["test_time_second"][-1])
        items.append(("event", Event("step_end", t0, cyc, step, seq, {"reason": "end"})))

    for cyc in (1, 2, 3):
        for cur in (-1e-4, 1e-4):
            t = np.sort(np.r_[0.0, rng.uniform(0, 3000, 150), 3000.0])
            v = 1.0 - 0.8 * t / 3000 if cur < 0 else 0.2 + 0.8 * t / 3000
            v = v + 0.05 * np.sin(20 * t / 3000)
            add({"test_time_second": t, "voltage_volt": v, "current_ampere": np.full(t.size, cur * (1 - 0.1 * (cyc == 1)))},
                {"technique": "gcd", "current_ampere": cur}, cyc)
    cols, events = gitt_pulse_train(d=1e-15, radius=3.5e-6, q_th=3.6, ocv_slope=-1.0, current=-1e-4, pulse=120.0,
                                    rest=20000.0, n_pulses=3, noise=1e-4, seed=3)
    steps = [e for e in events if e.kind == "step_start"]
    bounds = [e.sample_seq for e in steps] + [cols["test_time_second"].size]
    for e, a, b in zip(steps, bounds[:-1], bounds[1:], strict=True):
        add({k: cols[k][a:b] - (cols["test_time_second"][a] if k == "test_time_second" else 0)
             for k in ("test_time_second", "voltage_volt", "current_ampere")}, e.data, 4)
    for rate in (1e-3, 5e-4):
        e = np.r_[np.linspace(0, 1, 400), np.linspace(1, 0, 400)[1:]]
        i = rate * 1e-3 + 1e-4 * np.sqrt(rate) * np.exp(-((e - 0.5) / 0.05) ** 2) * np.r_[np.ones(400), -np.ones(399)]
        add({"test_time_second": np.arange(e.size) * 2.5e-3 / rate, "voltage_volt": e, "current_ampere": i},
            {"technique": "cv", "scan_rate_volt_per_second": rate}, 4)
    f = np.logspace(5, -2, 50)
    z = randles_sphere_impedance(f, r_s=5, r_ct=60, c_dl=2e-5, ocv_slope=-0.5, tau_d=12250, q_th=2.16)
    add({"test_time_second": np.arange(f.size, dtype=float), "voltage_volt": np.full(f.size, 0.5),
         "current_ampere": np.zeros(f.size), "frequency_hertz": f, "real_impedance_ohm": z.real,
         "imaginary_impedance_ohm": z.imag, "temperature_t1_celsius": np.full(f.size, 25.0)},
        {"technique": "eis", "step_type": "EIS"}, 4)
    fw = np.logspace(3, -1, 17)  # the same cell as a sampled waveform (galvanostatic, 0.1 mV noise)
    wave = sine_response(fw, randles_sphere_impedance(fw, r_s=5, r_ct=60, c_dl=2e-5, ocv_slope=-0.5, tau_d=12250,
                                                      q_th=2.16), amplitude=5e-5, samples_per_period=16, periods=2,
                         v_dc=0.5, drift=-1e-6)
    wave["voltage_volt"] = wave["voltage_volt"] + rng.normal(0.0, 1e-4, wave["voltage_volt"].size)
    add(wave, {"technique": "eis", "step_type": "EIS", "acquisition": "waveform"}, 4)
    items.append(("event", Event("run_end", t0, 4, step, seq, {"status": "completed"})))
    return items


__all__ = ["gitt_pulse_train", "randles_sphere_impedance", "cv_dunn", "arrhenius_rct", "sine_response", "mixed_stream",
           "FARADAY"]
