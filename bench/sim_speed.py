"""Speed of the simulated cell, and of PyBaMM's SPM on the same cycling (measured in the same run).

cyclerctl: the Sn@HC-2-1 preset (sn_hc) cycling at 1.7 A/g between 0.01 and 2.0 V with a record every
10 s — straight on the model (the cost of the physics and the samples) and through SimChannel on a
VirtualClock (what an engine run pays, Blocks and all); then 12,000 cycles alone.
PyBaMM: its SPM half cell with the hard-carbon parameters of pybamm_halfcell.py, constant-current
cycles at the same C-rate (1.7 A/g on ~650 mAh/g ~ 2.6C) with a 10 s period, IDAKLU solver. PyBaMM
has no Sn/HC composite model; the single-particle half cell is the nearest like-for-like.

    PYBAMM_DISABLE_TELEMETRY=true .venv/bin/python bench/sim_speed.py [--cycles 12000] [--no-pybamm]

Times are CPU seconds of this process (time.process_time), so a busy machine does not inflate them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).parent))

from cyclerctl.channel import StepStart  # noqa: E402
from cyclerctl.clock import VirtualClock  # noqa: E402
from cyclerctl.program import ConstantCurrent, End, Record  # noqa: E402
from cyclerctl.sim.channel import SimChannel  # noqa: E402
from cyclerctl.sim.cycling import cycle  # noqa: E402
from cyclerctl.sim.model import CellModel  # noqa: E402

RATE = 1.7  # A/g


def model_cycles(n: int) -> tuple[float, int, float]:
    """(seconds, samples, last reversible capacity mAh/g) for n cycles straight on the model."""
    m = CellModel("sn_hc")
    mass_g = m.cell.active_mass * 1e3
    i = RATE * mass_g
    cycle(m, i, i, m.preset.window)  # warm up (compiled code loaded)
    t0 = time.process_time()
    samples = 0
    c = None
    for _ in range(n):
        d, c = cycle(m, i, i, m.preset.window, every=10.0)
        samples += d.samples + c.samples
    return time.process_time() - t0, samples, c.charge / 3.6 / mass_g


def channel_cycles(n: int) -> tuple[float, int]:
    """(seconds, samples) for n cycles through SimChannel.run_step on a VirtualClock."""
    ch = SimChannel("sn_hc", clock=VirtualClock(), noise=True, seed=1)
    mass_g = ch.cell.active_mass * 1e3
    i = RATE * mass_g
    lo, hi = ch.preset.window
    rec = Record(every=10.0)
    dis = ConstantCurrent(step_id=0, name="d", current=-i, direction=-1, record=rec, ends=(End("voltage", "<=", lo),))
    chg = ConstantCurrent(step_id=1, name="c", current=i, direction=1, record=rec, ends=(End("voltage", ">=", hi),))

    async def go() -> tuple[float, int]:
        t = 0.0
        samples = 0
        t0 = time.process_time()
        for _ in range(n):
            for step in (dis, chg):
                async for b in ch.run_step(step, StepStart(test_time=t)):
                    samples += len(b)
                    if len(b):
                        t = float(b.time[-1])
        return time.process_time() - t0, samples

    return asyncio.run(go())


def pybamm_cycles(n: int) -> tuple[float, int] | str:
    """(seconds, samples) for n CC cycles of PyBaMM's SPM, or why it could not run."""
    try:
        import pybamm
        from pybamm_halfcell import capacity_ah, pybamm_model_and_parameters
    except Exception as exc:  # not installed
        return f"PyBaMM not available ({type(exc).__name__}: {exc})"
    # faster kinetics and a smaller contact resistance than the cross-check set, so that 2.6C cycles of
    # the hard-carbon half cell run through most of its capacity (as the Sn/HC cell does at 1.7 A/g)
    model, pv = pybamm_model_and_parameters("false", i0=1.0, i0_metal=50.0, rs=1.0)
    c_rate = 2.6
    current = c_rate * capacity_ah()
    steps = []
    for _ in range(n):
        steps += [pybamm.step.current(current, period=10.0, termination="0.01 V"),
                  pybamm.step.current(-current, period=10.0, termination="2.0 V")]
    exp = pybamm.Experiment(steps)
    pts = dict(model.default_var_pts)
    sim = pybamm.Simulation(model, parameter_values=pv, experiment=exp, var_pts=pts,
                            solver=pybamm.IDAKLUSolver())
    t0 = time.process_time()
    sol = sim.solve()
    dt = time.process_time() - t0
    return dt, len(sol["Time [s]"].entries)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=12_000, help="cycles of the long run")
    ap.add_argument("--sample", type=int, default=500, help="cycles of the per-cycle measurements")
    ap.add_argument("--pybamm-cycles", type=int, default=50)
    ap.add_argument("--no-pybamm", action="store_true")
    a = ap.parse_args()

    rows = []
    t, s, _cap = model_cycles(a.sample)
    rows.append(("cyclerctl model, sn_hc 1.7 A/g, 10 s records", a.sample, t, s))
    tc, sc = channel_cycles(max(a.sample // 5, 20))
    rows.append(("cyclerctl SimChannel (Blocks, noise)", max(a.sample // 5, 20), tc, sc))
    pb = None
    if not a.no_pybamm:
        pb = pybamm_cycles(a.pybamm_cycles)
        if isinstance(pb, tuple):
            rows.append(("PyBaMM SPM (IDAKLU), same cycling", a.pybamm_cycles, pb[0], pb[1]))
    print(f"{'what':48s} {'cycles':>7s} {'CPU s':>9s} {'ms/cycle':>9s} {'cycles/s':>10s} {'samples':>10s} {'us/sample':>10s}")
    for name, n, sec, smp in rows:
        print(f"{name:48s} {n:7d} {sec:9.3f} {sec / n * 1e3:9.3f} {n / sec:10.1f} {smp:10d} {sec / max(smp, 1) * 1e6:10.2f}")
    if isinstance(pb, str):
        print(f"{'PyBaMM SPM, same cycling':48s} {pb}")
    elif pb is not None:
        ratio = (pb[0] / a.pybamm_cycles) / (t / a.sample)
        print(f"\nper cycle: cyclerctl model is {ratio:.1f}x faster than PyBaMM's SPM (goal >= 10x)")
    t12, s12, cap = model_cycles(a.cycles)
    print(f"{a.cycles} cycles of sn_hc at 1.7 A/g, 10 s records: {t12:.2f} s, {s12:,} samples, "
          f"{t12 / a.cycles * 1e3:.3f} ms/cycle (goal <= 5 s); capacity at the end {cap:.0f} mAh/g")


if __name__ == "__main__":
    main()
