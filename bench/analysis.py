"""Throughput of the analysis operators on block input (one core), printed as a table.

Each workload is a journal-ordered stream of step events and sample blocks of a given size; each
operator is timed alone and all default operators together. Numbers are samples per second of
process CPU time on one thread (BLAS threads pinned to 1), fits included (GITT sphere fits at rest
end, EIS fits at sweep end, CV at step end); wall seconds are printed beside it (on a busy machine
they are longer). The compiled circuit kernels are loaded before anything is timed.

Run:  python bench/analysis.py [--block 1000]
"""

from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from cyclerctl.analysis.base import Event  # noqa: E402
from cyclerctl.analysis.live import operators_for  # noqa: E402
from cyclerctl.analysis.synthetic import gitt_pulse_train, randles_sphere_impedance, sine_response  # noqa: E402
from cyclerctl.program import Cell  # noqa: E402

CELL = Cell(active_mass=3.4e-6, nominal_specific_capacity=300 * 3600.0, particle_radius=3.5e-6)


def blocks(cols: dict[str, np.ndarray], events: list[Event], size: int) -> list[tuple[str, object]]:
    """Events in place, samples cut into blocks of `size` between them."""
    out: list[tuple[str, object]] = []
    pos = 0
    n = cols["test_time_second"].size
    for e in [*events, None]:
        stop = n if e is None else e.sample_seq
        for a in range(pos, stop, size):
            out.append(("samples", {k: v[a:min(a + size, stop)] for k, v in cols.items()}))
        pos = stop
        if e is not None:
            out.append(("event", e))
    return out


def gcd_workload(n_cycles: int = 200, per_half: int = 5000):
    t, v, i, sc, cy, ev = [], [], [], [], [], []
    t0, seq, step = 0.0, 0, 0
    q = np.linspace(0, 1, per_half)
    for c in range(1, n_cycles + 1):
        for cur in (-1e-4, 1e-4):
            step += 1
            ev.append(Event("step_start", t0, c, step, seq, {"technique": "gcd", "current_ampere": cur}))
            tt = t0 + q * 10_000
            vv = 1.0 - 0.9 * q - 0.05 * np.tanh((q - 0.6) * 30) if cur < 0 else 0.1 + 0.9 * q + 0.05 * np.tanh((q - 0.4) * 30)
            t.append(tt)
            v.append(vv)
            i.append(np.full(per_half, cur))
            sc.append(np.full(per_half, float(step)))
            cy.append(np.full(per_half, float(c)))
            seq += per_half
            t0 = float(tt[-1]) + 1
    ev.append(Event("run_end", t0, n_cycles, step, seq, {}))
    cols = {"test_time_second": np.concatenate(t), "voltage_volt": np.concatenate(v),
            "current_ampere": np.concatenate(i), "step_count": np.concatenate(sc), "cycle_count": np.concatenate(cy)}
    return cols, ev


def gitt_workload(n_pulses: int = 40):
    cols, ev = gitt_pulse_train(d=1e-15, radius=3.5e-6, q_th=3.6, ocv_slope=-1.0, current=-1e-4, pulse=1200.0,
                                rest=36000.0, n_pulses=n_pulses, dt_pulse=1.0, dt_rest=2.0, noise=1e-4)
    return cols, ev


def ici_workload(n: int = 200, on: float = 300.0, off: float = 10.0):
    """ICI: `on` s of current at 1 s records, `off` s interruptions at 0.1 s records, n times."""
    t, v, i, sc, ev = [], [], [], [], []
    t0, seq, step, e0 = 0.0, 0, 0, 1.0
    for _ in range(n):
        for role, dur, dt, cur in (("current", on, 1.0, -1e-4), ("interruption", off, 0.1, 0.0)):
            step += 1
            tt = np.arange(0.0, dur, dt)
            if cur:
                vv = e0 - 0.01 - 1e-5 * tt - 2e-4 * np.sqrt(tt)
            else:
                vv = e0 - 3e-3 * (1 - 0.3 * np.sqrt(tt / off))
            ev.append(Event("step_start", t0, 1, step, seq, {"technique": "ici", "tags": {"role": role},
                                                              "current_ampere": cur}))
            t.append(t0 + tt)
            v.append(vv)
            i.append(np.full(tt.size, cur))
            sc.append(np.full(tt.size, float(step)))
            seq += tt.size
            t0 += dur
        e0 -= 3e-3
    ev.append(Event("run_end", t0, 1, step, seq, {}))
    cols = {"test_time_second": np.concatenate(t), "voltage_volt": np.concatenate(v),
            "current_ampere": np.concatenate(i), "step_count": np.concatenate(sc), "cycle_count": np.ones(seq)}
    return cols, ev


def cv_workload(rates=(1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3), points=20_000):
    t, v, i, sc, ev = [], [], [], [], []
    t0, seq = 0.0, 0
    for k, r in enumerate(rates):
        e = np.r_[np.linspace(0, 2.5, points), np.linspace(2.5, 0, points)]
        cur = r * 1e-3 + 1e-4 * np.sqrt(r) * np.exp(-((e - 0.5) / 0.05) ** 2) * np.r_[np.ones(points), -np.ones(points)]
        ev.append(Event("step_start", t0, 1, k + 1, seq, {"technique": "cv", "scan_rate_volt_per_second": r}))
        tt = t0 + np.arange(e.size) * 2.5 / points / r
        t.append(tt)
        v.append(e)
        i.append(cur)
        sc.append(np.full(e.size, k + 1.0))
        seq += e.size
        t0 = float(tt[-1]) + 1
    ev.append(Event("run_end", t0, 1, len(rates), seq, {}))
    cols = {"test_time_second": np.concatenate(t), "voltage_volt": np.concatenate(v),
            "current_ampere": np.concatenate(i), "step_count": np.concatenate(sc), "cycle_count": np.ones(seq)}
    return cols, ev


def eis_workload(n_spectra: int = 20, noise: float = 0.0):
    """`n_spectra` Randles-sphere spectra of 57 points, R_ct rising 10 % each; `noise`: relative complex
    Gaussian noise on Z."""
    f = np.logspace(5, -2, 57)
    rng = np.random.default_rng(1)
    cols = {k: [] for k in ("test_time_second", "voltage_volt", "current_ampere", "frequency_hertz",
                            "real_impedance_ohm", "imaginary_impedance_ohm", "temperature_t1_celsius", "step_count")}
    ev, seq = [], 0
    for k in range(n_spectra):
        z = randles_sphere_impedance(f, r_s=5, r_ct=60 * (1 + 0.1 * k), c_dl=2e-5, ocv_slope=-0.5, tau_d=12250, q_th=2.16)
        z = z * (1 + noise * (rng.standard_normal(f.size) + 1j * rng.standard_normal(f.size)) / np.sqrt(2))
        ev.append(Event("step_start", float(seq), 1, k + 1, seq, {"technique": "eis", "step_type": "EIS"}))
        for name, a in (("test_time_second", seq + np.arange(f.size)), ("voltage_volt", np.full(f.size, 0.5)),
                        ("current_ampere", np.zeros(f.size)), ("frequency_hertz", f), ("real_impedance_ohm", z.real),
                        ("imaginary_impedance_ohm", z.imag), ("temperature_t1_celsius", np.full(f.size, 10.0 + 2 * k)),
                        ("step_count", np.full(f.size, k + 1.0))):
            cols[name].append(np.asarray(a, float))
        seq += f.size
    ev.append(Event("run_end", float(seq), 1, n_spectra, seq, {}))
    return {k: np.concatenate(v) for k, v in cols.items()}, ev


def eis_wave_workload(n_spectra: int = 20, samples_per_period: int = 64, periods: int = 4, seed: int = 2):
    """The spectra of eis_workload as sampled waveforms (acquisition "waveform", the protocol's defaults:
    64 samples per period, one settling period and 4 more per frequency; potentiostatic 5 mV rms at
    the OCV) with the simulated channel's noise: 0.1 mV on the voltage, 1e-4 of |I| plus 1 nA on the
    current."""
    f = np.logspace(5, -2, 57)
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("test_time_second", "voltage_volt", "current_ampere", "frequency_hertz",
                            "temperature_t1_celsius", "step_count")}
    ev, seq, t0 = [], 0, 0.0
    for k in range(n_spectra):
        z = randles_sphere_impedance(f, r_s=5, r_ct=60 * (1 + 0.1 * k), c_dl=2e-5, ocv_slope=-0.5, tau_d=12250, q_th=2.16)
        w = sine_response(f, z, amplitude=5e-3, samples_per_period=samples_per_period, periods=periods,
                          galvanostatic=False, v_dc=0.5, t_start=t0)
        n = w["test_time_second"].size
        w["voltage_volt"] = w["voltage_volt"] + rng.normal(0, 1e-4, n)
        i = w["current_ampere"]
        w["current_ampere"] = i + rng.standard_normal(n) * (1e-9 + 1e-4 * np.abs(i))
        w["temperature_t1_celsius"] = np.full(n, 10.0 + 2 * k)
        w["step_count"] = np.full(n, k + 1.0)
        ev.append(Event("step_start", t0, 1, k + 1, seq, {"technique": "eis", "step_type": "EIS",
                                                          "acquisition": "waveform"}))
        for name in cols:
            cols[name].append(w[name])
        seq += n
        t0 = float(w["test_time_second"][-1]) + 1.0
    ev.append(Event("run_end", t0, 1, n_spectra, seq, {}))
    return {k: np.concatenate(v) for k, v in cols.items()}, ev


def eis_wave_rates(block: int = 100_000) -> str:
    """The EIS operator alone on waveform input at 16 to 128 samples per period: samples/s, and the
    demodulation alone (the step never ends, so nothing is fitted)."""
    from cyclerctl.analysis.eis import EisOperator

    out = []
    for spp in (16, 32, 64, 128):
        cols, ev = eis_wave_workload(samples_per_period=spp)
        n = cols["test_time_second"].size
        cpu, _, rows = timed([EisOperator()], blocks(cols, ev, block))
        stream = [(k, x) for k, x in blocks(cols, ev[:1], block)]  # the first step_start only: no fit
        cpu_d, _, _ = timed([EisOperator()], stream)
        out.append(f"{spp:>4} per period: {n / cpu:>12,.0f} samples/s with the fits, {n / cpu_d:>12,.0f} "
                   f"demodulating alone ({rows} spectra, {n // rows:,} samples each)")
    return "\n    ".join(out)


def timed(ops, stream) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, metric rows) of feeding `stream` through `ops`."""
    c0, t0 = time.process_time(), time.perf_counter()
    rows = 0
    for kind, item in stream:
        for op in ops:
            rows += len(op.feed_samples(item) if kind == "samples" else op.feed_event(item))
    return time.process_time() - c0, time.perf_counter() - t0, rows


def eis_rates(cols, events) -> str:
    """Points, spectra, circuit fits and least-squares runs (multi-start) per CPU second of the EIS
    operator alone, and where its CPU time goes: the streaming part (feed_samples: the impedance rows
    of each block kept) against the per-spectrum part at the sweep end (Lin-KK, the circuit fits with
    their starts, the rest of the row)."""
    from cyclerctl.analysis import circuits, eis

    runs = [0]
    spent = {"lin_kk": 0.0, "fits": 0.0}

    def counted(inner):
        def run(*a, **k):
            runs[0] += 1
            return inner(*a, **k)
        return run

    per_circuit: dict[str, list[float]] = {}

    def timed_call(inner, key):
        def call(*a, **k):
            c = time.process_time()
            try:
                return inner(*a, **k)
            finally:
                dt = time.process_time() - c
                spent[key] += dt
                if key == "fits":
                    per_circuit.setdefault(str(a[0]), []).append(dt)
        return call

    ops = operators_for(CELL)
    op = ops[[o.kind for o in ops].index("eis")]
    saved = circuits.least_squares, circuits.levenberg_marquardt, eis.lin_kk, eis.fit_circuit
    circuits.least_squares, circuits.levenberg_marquardt = (counted(f) for f in saved[:2])
    eis.lin_kk, eis.fit_circuit = timed_call(saved[2], "lin_kk"), timed_call(saved[3], "fits")
    stream_cpu = event_cpu = 0.0
    try:
        rows = []
        for kind, item in blocks(cols, events, 1000):
            c0 = time.process_time()
            if kind == "samples":
                rows += op.feed_samples(item)
                stream_cpu += time.process_time() - c0
            else:
                rows += op.feed_event(item)
                event_cpu += time.process_time() - c0
    finally:
        circuits.least_squares, circuits.levenberg_marquardt, eis.lin_kk, eis.fit_circuit = saved
    cpu = stream_cpu + event_cpu
    n_fits = sum(len(r.data.get("fits") or []) for r in rows)
    n = cols["test_time_second"].size
    n_spec = max(len(rows), 1)
    rest = event_cpu - spent["lin_kk"] - spent["fits"]
    return (f"{len(rows)} spectra of {n // n_spec} points in {cpu:.3f} CPU s: {n / cpu:,.0f} points/s, "
            f"{len(rows) / cpu:.1f} spectra/s, {n_fits / cpu:.1f} circuit fits/s ({runs[0] / cpu:.0f} least-squares "
            f"runs/s, {runs[0] / max(n_fits, 1):.1f} starts per fit)\n"
            f"    per sample (feed_samples, {n:,} rows in blocks): {stream_cpu:.4f} CPU s, {n / max(stream_cpu, 1e-9):,.0f} "
            f"samples/s\n"
            f"    per spectrum (sweep end): {1e3 * event_cpu / n_spec:.2f} CPU ms = Lin-KK {1e3 * spent['lin_kk'] / n_spec:.2f}"
            f" + {n_fits / n_spec:.0f} circuit fits {1e3 * spent['fits'] / n_spec:.2f} "
            f"({1e3 * spent['fits'] / max(n_fits, 1):.2f} ms per fit, starts included) + the rest "
            f"{1e3 * rest / n_spec:.2f} (σ window, row)\n"
            "    CPU ms per fit: " + ", ".join(f"{c} {1e3 * sum(t) / len(t):.2f}" for c, t in per_circuit.items()))


def eis_streaming(n: int = 1_000_000) -> str:
    """The streaming part alone on one long sweep: `n` impedance rows fed in blocks (no fit: the step
    is not ended)."""
    f = np.logspace(5, -2, n)
    cols = {"test_time_second": np.arange(n, dtype=float), "voltage_volt": np.full(n, 0.5),
            "current_ampere": np.zeros(n), "frequency_hertz": f, "real_impedance_ohm": 5 + 1e-3 * np.arange(n),
            "imaginary_impedance_ohm": -np.ones(n), "temperature_t1_celsius": np.full(n, 25.0),
            "step_count": np.ones(n)}
    out = []
    for size in (1000, 100_000):
        ops = operators_for(CELL)
        op = ops[[o.kind for o in ops].index("eis")]
        op.feed_event(Event("step_start", 0.0, 1, 1, 0, {"technique": "eis", "step_type": "EIS"}))
        parts = [{k: v[a:a + size] for k, v in cols.items()} for a in range(0, n, size)]
        c0 = time.process_time()
        for item in parts:
            op.feed_samples(item)
        cpu = time.process_time() - c0
        out.append(f"blocks of {size:,}: {n / cpu:,.0f} samples/s")
    return f"{n:,} rows of one sweep, " + ", ".join(out)


def warm_up() -> None:
    """Load the compiled circuit kernels (numba, cached on disk after the first run) on a spectrum that
    is not in any workload, so that no timed run pays for it."""
    from cyclerctl.analysis.eis import EisSettings, analyze_spectrum

    f = np.logspace(5, -2, 57)
    analyze_spectrum(f, randles_sphere_impedance(f, r_s=3, r_ct=33, c_dl=1e-5, ocv_slope=-0.5, tau_d=5000, q_th=2.16),
                     EisSettings())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, nargs="+", default=[1000, 100_000], help="samples per block")
    ap.add_argument("--workload", nargs="+", choices=["gcd", "gitt", "ici", "cv", "eis", "eis-wave"],
                    help="only these workloads (default: all, then the EIS rates)")
    args = ap.parse_args()
    makers = {"gcd": gcd_workload, "gitt": gitt_workload, "ici": ici_workload, "cv": cv_workload,
              "eis": eis_workload, "eis-wave": eis_wave_workload}
    workloads = {name: make() for name, make in makers.items() if not args.workload or name in args.workload}
    warm_up()
    print(f"{'workload':<9} {'operator':<11} {'block':>7} {'samples':>10} {'rows':>6} {'cpu s':>7} {'wall s':>7} "
          f"{'samples/s':>13}")
    for block in args.block:
        for name, (cols, ev) in workloads.items():
            stream = blocks(cols, ev, block)
            n = cols["test_time_second"].size
            names = [op.kind for op in operators_for(CELL)]
            for k, op_name in enumerate([*names, "all"]):
                ops = operators_for(CELL)
                chosen = ops if op_name == "all" else [ops[k]]
                if op_name == "arrhenius":  # reads the EIS operator's results: time it with that operator
                    chosen = [ops[names.index("eis")], ops[k]]
                    op_name = "eis+arrh."
                cpu, wall, rows = timed(chosen, stream)
                print(f"{name:<9} {op_name:<11} {block:>7} {n:>10} {rows:>6} {cpu:>7.3f} {wall:>7.3f} "
                      f"{n / max(cpu, 1e-9):>13,.0f}")
        print()
    if "eis-wave" in workloads:
        print("eis from the sampled waveform, blocks of 100,000:\n    " + eis_wave_rates())
    if "eis" not in workloads:
        return
    print("eis, noise-free:", eis_rates(*workloads["eis"]))
    print("eis, 0.2 % noise:", eis_rates(*eis_workload(noise=0.002)))
    print("eis streaming part alone:", eis_streaming())


if __name__ == "__main__":
    main()
