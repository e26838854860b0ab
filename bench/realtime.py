"""Real-time mode: N simulated channels sampled at 10 Hz in wall-clock time, one process.

Each channel runs a galvanostatic step on the simulated cell with a record every 0.1 s and hands
every sample to the engine as soon as it is taken (one sample per block). The journal commits every
`--commit-interval` seconds. The channels are started over `--start-spread` seconds (channel k of N
k/N of it later, `RunSettings.start_spread`), so that their samples interleave instead of all falling in
the same millisecond of every 100 ms. Sample-to-journal latency = wall time when the COMMIT holding the
sample returned - wall time at which the sample was taken. For each N the table gives p50/p99
latency (all samples, and after each channel's first second), the sample rate
achieved, and the CPU the process used (in % of one core, and in CPU microseconds per sample: the
figure that depends least on what else the machine is doing); the largest N with p99 < 100 ms over
every sample (the start included) and every sample on time is reported at the end.

    .venv/bin/python bench/realtime.py                        # N = 50, 100, 200, 400, 800, 1000
    .venv/bin/python bench/realtime.py --channels 100 300 --seconds 20 --analysis
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from cyclerctl.engine.session import ChannelPlan, RunSettings, Session
from cyclerctl.program import ConstantCurrent, End, Limits, Program, Record
from cyclerctl.sim import load_preset
from cyclerctl.store import schema

T_COL = schema.SAMPLE_COLUMNS.index("test_time_second")


def program(seconds: float, preset: str) -> Program:
    cell = load_preset(preset).default_cell
    limits = Limits(voltage_min=-0.05, voltage_max=3.0, current_max=0.01)
    step = ConstantCurrent(step_id=0, name="CC -30 mA/g, 10 Hz", current=-30e-3 * (cell.active_mass or 3.4e-6) * 1e3,
                           ends=(End("step_time", ">=", seconds),), record=Record(every=0.1), limits=limits,
                           direction=-1)
    return Program(name="realtime", instructions=(step,), cell=cell, safety=limits)


async def one(n: int, seconds: float, args, work: Path) -> dict:
    run_dir = work / f"n{n}"
    shutil.rmtree(run_dir, ignore_errors=True)
    prog = program(seconds, args.preset)
    plans = [ChannelPlan(f"c{k:04d}", prog, f"sim:{args.preset}", {"noise": True, "seed": k}) for k in range(n)]
    settings = RunSettings(speed=1.0, mqtt="off", export=(), analysis=args.analysis,
                           commit_interval=args.commit_interval, max_block_span=0.1, watchdog=30.0,
                           channel_state_interval=args.channel_state_interval, start_spread=args.start_spread)
    session = Session.create(plans, settings, run_dir)
    journal = session.journal
    runners = session.runners
    clock = next(iter(session.runners.values())).clock
    staged: list[tuple[float, np.ndarray]] = []  # (offset, test times) of the commit being written
    latencies: list[np.ndarray] = []
    late: list[np.ndarray] = []
    insert, sync = journal._insert, journal._sync

    def traced_insert(batch, audit, states):
        staged.clear()
        for ch, p in batch.items():
            for rows in p.samples:
                staged.append((runners[ch]._time_offset, rows[:, T_COL]))
        return insert(batch, audit, states)

    def traced_sync(counts):
        mine = list(staged)
        sync(counts)
        now = clock.now()
        for off, t in mine:
            latencies.append(now - (t - off))
            late.append(t >= 1.0)  # after the first second of the channel's run (steady state)

    journal._insert, journal._sync = traced_insert, traced_sync
    proc = psutil.Process()
    cpu0 = proc.cpu_times()
    t0 = time.monotonic()
    await session.execute()
    wall = time.monotonic() - t0
    cpu1 = proc.cpu_times()
    cpu = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / wall
    lat = np.concatenate(latencies) if latencies else np.array([math.nan])
    steady = lat[np.concatenate(late)] if latencies else lat
    if not len(steady):
        steady = np.array([math.nan])
    samples = sum(r.es.seq for r in session.runners.values())
    faults = sum(1 for r in session.runners.values() if r.es.status == "faulted")
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"n": n, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "p99_steady": float(np.percentile(steady, 99)),
            "max": float(np.max(lat)), "samples": samples, "rate": samples / wall,
            # every sample on time: 10 Hz per channel over its `seconds`, the starts spread over start_spread
            "expected": n * 10.0 * seconds / (seconds + args.start_spread),
            "cpu": cpu, "cpu_per_sample": cpu * wall / max(samples, 1), "commits": journal.commits, "faults": faults,
            "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, nargs="+", default=[50, 100, 200, 400, 800, 1000])
    ap.add_argument("--seconds", type=float, default=15.0, help="test time per channel (wall-clock seconds)")
    ap.add_argument("--commit-interval", type=float, default=0.02)
    ap.add_argument("--analysis", action="store_true", help="run the analysis operators live too")
    ap.add_argument("--channel-state-interval", type=float, default=1.0,
                    help="wall seconds between saved simulator states per channel (0: at every commit)")
    ap.add_argument("--start-spread", type=float, default=0.5,
                    help="wall seconds over which the channels are started (0: all at once)")
    ap.add_argument("--preset", default="hard_carbon")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cyclerctl-realtime-"))
    warm = argparse.Namespace(**{**vars(args), "analysis": args.analysis})
    asyncio.run(one(2, 1.0, warm, work))  # compile the simulator's kernels before timing anything
    print(f"real-time: 10 Hz per channel, one sample per block, commit every {args.commit_interval * 1e3:.0f} ms, "
          f"analysis {'on' if args.analysis else 'off'}, simulator state saved every "
          f"{args.channel_state_interval:g} s, {psutil.cpu_count()} CPUs, {args.seconds:g} s per run")
    head = (f"{'N':>6} {'p50 ms':>8} {'p99 ms':>8} {'p99 >1s':>8} {'max ms':>8} {'samples/s':>10} {'of':>8} "
            f"{'CPU %':>7} {'CPU us/sample':>14} {'commits':>8}")
    print(head)
    best = None
    for n in args.channels:
        r = asyncio.run(one(n, args.seconds, args, work))
        ok = r["p99"] < 0.100 and r["rate"] >= 0.95 * r["expected"] and not r["faults"]
        print(f"{r['n']:>6} {r['p50'] * 1e3:>8.1f} {r['p99'] * 1e3:>8.1f} {r['p99_steady'] * 1e3:>8.1f} "
              f"{r['max'] * 1e3:>8.1f} "
              f"{r['rate']:>10,.0f} {r['expected']:>8,.0f} {r['cpu'] * 100:>7.0f} {r['cpu_per_sample'] * 1e6:>14.0f} "
              f"{r['commits']:>8}"
              + ("" if ok else "   <- over budget" + (f" ({r['faults']} faulted)" if r["faults"] else "")))
        if ok:
            best = r
    shutil.rmtree(work, ignore_errors=True)
    if best:
        print(f"largest N with p99 < 100 ms (every sample, the start included) and every sample on time: "
              f"{best['n']} (p99 {best['p99'] * 1e3:.1f} ms, {best['p99_steady'] * 1e3:.1f} ms after each "
              f"channel's first second, CPU {best['cpu'] * 100:.0f} %)")
    else:
        print("no N met p99 < 100 ms")


if __name__ == "__main__":
    main()
