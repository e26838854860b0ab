"""CPU cost of the dQ/dV operator per half cycle, on the stream the long-cycling protocol produces.

Workload: the Sn@HC-2-1 preset (sn_hc) through SimChannel (noise on, VirtualClock), cycling at
1.7 A/g between 0.005 and 2.0 V with a record every 30 s or 10 mV, as
protocols/snhc_long_cycling_1p7.yaml; each half cycle arrives as one sample block (~120-140 samples),
after its step_start event. The stream is fed through DqdvOperator alone, `--repeat` times (a fresh
operator each time), and the best pass is printed: CPU µs per half cycle (time.process_time) for
feed_samples without the half-cycle close, for the close (smoothing, peaks, tracking, the row), and
the sum. `--baseline FILE` times another version of dqdv.py in alternating passes of the same run
(a fair comparison on a busy host) and compares its rows; `--save FILE` writes the metric rows as
JSON, `--compare FILE` checks them against such a file (rows equal: every number the same).

Run:  python bench/dqdv_cost.py [--cycles 200] [--repeat 5] [--baseline old_dqdv.py]
      (old_dqdv.py e.g. from `git show REV:src/cyclerctl/analysis/dqdv.py > old_dqdv.py`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from cyclerctl.analysis.base import Event  # noqa: E402
from cyclerctl.analysis.dqdv import DqdvOperator  # noqa: E402

RATE = 1.7  # A/g
WINDOW = (0.005, 2.0)  # V


def workload(n_cycles: int, seed: int = 1) -> tuple[list[tuple[str, object]], float]:
    """The journal-ordered stream (events and one block per half cycle) and the active mass (kg)."""
    from cyclerctl.channel import StepStart
    from cyclerctl.clock import VirtualClock
    from cyclerctl.program import ConstantCurrent, End, Record
    from cyclerctl.sim.channel import SimChannel

    ch = SimChannel("sn_hc", clock=VirtualClock(), noise=True, seed=seed)
    mass = ch.cell.active_mass
    i = RATE * mass * 1e3
    rec = Record(every=30.0, voltage_change=0.010)
    dis = ConstantCurrent(step_id=0, name="d", current=-i, direction=-1, record=rec,
                          ends=(End("voltage", "<=", WINDOW[0]),))
    chg = ConstantCurrent(step_id=1, name="c", current=i, direction=1, record=rec,
                          ends=(End("voltage", ">=", WINDOW[1]),))

    async def go() -> list[tuple[str, object]]:
        stream: list[tuple[str, object]] = []
        t, seq, step = 0.0, 0, 0
        for c in range(1, n_cycles + 1):
            for st in (dis, chg):
                step += 1
                stream.append(("event", Event("step_start", t, c, step, seq, {"technique": "gcd"})))
                parts = []
                async for b in ch.run_step(st, StepStart(test_time=t)):
                    if len(b):
                        parts.append(b.columns)
                        t = float(b.time[-1])
                cols = {k: np.concatenate([p[k] for p in parts]) for k in
                        ("test_time_second", "voltage_volt", "current_ampere")}
                n = cols["test_time_second"].size
                cols["step_count"] = np.full(n, float(step))
                cols["cycle_count"] = np.full(n, float(c))
                stream.append(("samples", cols))
                seq += n
        stream.append(("event", Event("run_end", t, n_cycles, step, seq, {})))
        return stream

    return asyncio.run(go()), mass


def baseline_operator(path: str) -> type:
    """DqdvOperator from another version of dqdv.py (e.g. `git show REV:src/cyclerctl/analysis/dqdv.py`),
    loaded as a module of the same package."""
    import importlib.util
    import sys

    name = "cyclerctl.analysis._dqdv_baseline"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # the compiled functions' cache finds their module by name
    spec.loader.exec_module(mod)
    return mod.DqdvOperator


def one_pass(stream, mass: float, operator: type = DqdvOperator) -> tuple[float, float, float, int, list]:
    """(CPU s of feed_samples and feed_event without the close, CPU s of the closes that keep no
    curve, CPU s of those that keep one, closes, rows)."""
    op = operator(mass)
    inner = op._close
    spent = [0.0, 0.0, 0]

    def close(final: bool = False):
        c = time.process_time()
        out = inner(final)
        spent[1 if out and out[0].data["voltage_volt"] is not None else 0] += time.process_time() - c
        spent[2] += 1
        return out

    op._close = close
    rows = []
    c0 = time.process_time()
    for kind, item in stream:
        rows += op.feed_samples(item) if kind == "samples" else op.feed_event(item)
    total = time.process_time() - c0
    return total - spent[0] - spent[1], spent[0], spent[1], spent[2], rows


def report(title: str, passes, halves: int, samples: int) -> tuple[float, list]:
    """Print the best pass (least total CPU); returns its total CPU µs per half cycle and its rows
    (JSON round trip)."""
    feed, bare, curve, closes, rows = min(passes, key=lambda p: p[0] + p[1] + p[2])
    data = [json.loads(json.dumps(r.data)) for r in rows]
    n_peaks = sum(len(r["peaks"]) for r in data)
    n_curve = sum(r["voltage_volt"] is not None for r in data)
    print(f"{title}: {halves} half cycles, {samples / halves:.0f} samples per half cycle, {len(rows)} rows "
          f"({n_curve} with the curve, {closes} closes), {n_peaks / max(len(rows), 1):.1f} peaks per row; "
          f"best of {len(passes)}")
    print(f"  {'part':<40} {'CPU µs per half cycle':>22}")
    for name, s, n in (("feed_samples without close", feed, halves),
                       ("_close, no curve kept (per such row)", bare, len(rows) - n_curve),
                       ("_close, curve kept (per such row)", curve, n_curve),
                       ("_close, all", bare + curve, halves),
                       ("total", feed + bare + curve, halves)):
        print(f"  {name:<40} {1e6 * s / max(n, 1):>22.1f}")
    return 1e6 * (feed + bare + curve) / halves, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5, help="passes over the stream; the best is printed")
    ap.add_argument("--baseline", help="another version of dqdv.py: its passes alternate with this one's, "
                                       "and its rows are compared")
    ap.add_argument("--save", help="write the metric rows (JSON) to this file")
    ap.add_argument("--compare", help="check the metric rows against this file (from --save)")
    args = ap.parse_args()
    stream, mass = workload(args.cycles)
    halves = sum(1 for kind, _ in stream if kind == "samples")
    samples = sum(item["test_time_second"].size for kind, item in stream if kind == "samples")
    ops = {"this version": DqdvOperator}
    if args.baseline:
        ops["baseline"] = baseline_operator(args.baseline)
    for op in ops.values():
        one_pass(stream[:8], mass, op)  # load the compiled code before anything is timed
    passes: dict[str, list] = {name: [] for name in ops}
    for _ in range(args.repeat):
        for name, op in ops.items():
            passes[name].append(one_pass(stream, mass, op))
    print(f"{args.cycles} cycles of sn_hc at {RATE} A/g, {WINDOW[0]}-{WINDOW[1]} V, records every 30 s / 10 mV")
    totals, data = {}, {}
    for name in ops:
        totals[name], data[name] = report(name, passes[name], halves, samples)
    if args.baseline:
        print(f"baseline / this version: {totals['baseline'] / totals['this version']:.2f}x; rows equal: "
              f"{data['this version'] == data['baseline']}")
    if args.save:
        with open(args.save, "w") as f:
            json.dump(data["this version"], f)
    if args.compare:
        with open(args.compare) as f:
            ref = json.load(f)
        print("rows equal to", args.compare, ":", data["this version"] == ref)


if __name__ == "__main__":
    main()
