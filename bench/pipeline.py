"""The whole pipeline on the 12,000-cycle Sn/HC long-cycling protocol.

Engine + journal (SQLite WAL, synchronous=FULL) + live analysis + MQTT publishing to a local
mosquitto (started here on a free loopback port) + BDF export (written while the run goes, completed
at its end), on the simulated cycler at max speed.
Prints wall time (until the run ended, then the MQTT publisher's rest and the export's completion,
which run side by side), samples/s, CPU seconds of this process, of the MQTT process (publishing runs in a
process of its own; --mqtt-in-process runs it as a task here) and of mosquitto, peak RSS and RSS along
the run (it must not grow with the cycles), then
re-inserts the same sample rows into a fresh database on the same disk with the same commit batching
(the practical limit of the journal) and prints the ratio.

    .venv/bin/python bench/pipeline.py                  # 12,000 cycles (the protocol as shipped)
    .venv/bin/python bench/pipeline.py --cycles 1000    # a shorter run
    .venv/bin/python bench/pipeline.py --mqtt off --no-analysis
    .venv/bin/python bench/pipeline.py --cycles 1000 --mqtt-in-process
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from cyclerctl.engine.session import ChannelPlan, RunSettings, Session
from cyclerctl.program import LoopStart
from cyclerctl.protocol import compile_file
from cyclerctl.store import schema
from cyclerctl.store.export import parse_formats
from cyclerctl.store.journal import connect

PROTOCOL = "protocols/snhc_long_cycling_1p7.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    f"max_queued_messages 100000\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def program_with_cycles(path: str, cycles: int | None):
    program = compile_file(path)
    if cycles is None:
        return program
    ins = [dataclasses.replace(i, at_most=cycles) if isinstance(i, LoopStart) and i.at_most else i
           for i in program.instructions]
    return dataclasses.replace(program, instructions=tuple(ins))


def raw_insert(journal_dir: Path, target_dir: Path, rows_per_commit: int) -> tuple[int, float]:
    """Insert the run's sample rows into a fresh journal on the same disk, same schema and pragmas,
    `rows_per_commit` rows per transaction. Returns (rows, seconds of inserting + committing)."""
    src = connect(journal_dir, readonly=True)
    dst_path = target_dir / "raw.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(str(dst_path) + suffix).unlink(missing_ok=True)
    dst = sqlite3.connect(dst_path, isolation_level=None)
    dst.execute("PRAGMA journal_mode=WAL")
    dst.execute("PRAGMA synchronous=FULL")
    dst.executescript(schema.DDL)
    sql = schema.INSERT_SAMPLE
    cols = ", ".join(schema.SAMPLE_COLUMNS)
    cur = src.execute(f"SELECT ch, {cols} FROM samples ORDER BY ch, seq")
    n, busy = 0, 0.0
    piece = min(rows_per_commit, 20_000)  # rows held at a time (memory stays flat), not rows per commit
    rows = cur.fetchmany(piece)
    while rows:
        t = time.perf_counter()
        dst.execute("BEGIN IMMEDIATE")
        busy += time.perf_counter() - t
        in_tx = 0
        while rows and in_tx < rows_per_commit:
            part = rows[:rows_per_commit - in_tx]
            t = time.perf_counter()
            dst.executemany(sql, part)
            busy += time.perf_counter() - t
            in_tx += len(part)
            rows = rows[len(part):] or cur.fetchmany(piece)
        t = time.perf_counter()
        dst.execute("COMMIT")
        busy += time.perf_counter() - t
        n += in_tx
    src.close()
    dst.close()
    return n, busy


async def run(args) -> dict:
    work = Path(args.dir or tempfile.mkdtemp(prefix="cyclerctl-bench-"))
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    program = program_with_cycles(args.protocol, args.cycles)
    broker = None
    mqtt = "off"
    if args.mqtt == "mosquitto":
        broker, port = start_mosquitto(work)
        mqtt = f"mqtt://127.0.0.1:{port}"
    formats = parse_formats(args.export) if args.export else ()
    settings = RunSettings(mqtt=mqtt, node="bench", export=formats, analysis=args.analysis, mqtt_commands="off",
                           mqtt_process=not args.mqtt_in_process)
    plan = ChannelPlan("ch1", program, f"sim:{args.preset}", {"noise": not args.no_noise, "seed": 1},
                       args.protocol)
    proc = psutil.Process()
    rss_trace: list[tuple[int, float]] = []
    every = max(1, (args.cycles or 12000) // 6)

    child_rss = [0.0]  # the MQTT process (ru_maxrss of a child counts the parent's pages at fork time)

    ended = [math.nan]

    def on(ch, kind, payload):
        if kind == "event" and payload.kind == "run_end":
            ended[0] = time.perf_counter()
        if kind == "event" and payload.kind == "cycle_start" and payload.data["cycle_count"] % every == 0:
            rss_trace.append((payload.data["cycle_count"], proc.memory_info().rss / 1e6))
        if kind == "event" and payload.kind == "cycle_start" and payload.data["cycle_count"] % 200 == 0:
            for kid in proc.children():
                if broker is None or kid.pid != broker.pid:
                    with contextlib.suppress(psutil.Error):
                        child_rss[0] = max(child_rss[0], kid.memory_info().rss / 1e6)

    try:
        session = Session.create([plan], settings, run_dir)
        session.listeners.append(on)
        t0, c0 = time.perf_counter(), time.process_time()
        await session.execute()  # the BDF files are written while it runs and completed at its end
        t_export, cpu_export = session.export_time, session.export_cpu
        t_total = time.perf_counter() - t0
        cpu_run = time.process_time() - c0 - cpu_export
        t_engine = ended[0] - t0
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the MQTT process (mosquitto still runs)
        cpu_mqtt = kids.ru_utime + kids.ru_stime
        peak_run = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        files = session.exported
    finally:
        broker_cpu = None
        if broker is not None:
            try:
                ct = psutil.Process(broker.pid).cpu_times()
                broker_cpu = ct.user + ct.system
            except psutil.Error:
                pass
            broker.terminate()
            broker.wait()
    r = session.runners["ch1"]
    samples = r.es.seq
    commits = max(1, session.journal.commits)
    published = getattr(session.mqtt_status, "published", None)
    raw_rows, raw_s = raw_insert(run_dir, work, max(1, samples // commits))
    return {
        "dir": run_dir, "cycles": r.es.cycle_count, "samples": samples, "status": r.es.status,
        "total_s": t_total, "engine_s": t_engine, "export_s": t_export, "cpu_run_s": cpu_run, "cpu_export_s": cpu_export,
        "broker_cpu_s": broker_cpu, "cpu_mqtt_s": cpu_mqtt, "rss_mqtt_mb": child_rss[0], "files": len(files), "commits": commits,
        "published": published, "sync_s": session.journal.sync_time, "waited_s": session.journal.waited, "raw_rows": raw_rows, "raw_s": raw_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_trace": rss_trace,
        "peak_run_mb": peak_run,
        "journal_mb": sum(p.stat().st_size for p in run_dir.glob("journal.sqlite*")) / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", default=PROTOCOL)
    ap.add_argument("--preset", default="sn_hc")
    ap.add_argument("--cycles", type=int, default=None, help="override the long loop's at_most (default: as shipped)")
    ap.add_argument("--mqtt", choices=("mosquitto", "off"), default="mosquitto")
    ap.add_argument("--no-analysis", dest="analysis", action="store_false")
    ap.add_argument("--mqtt-in-process", action="store_true",
                    help="publish from a task of the engine's process instead of a process of its own")
    ap.add_argument("--no-noise", action="store_true")
    ap.add_argument("--export", default="bdf-parquet,bdf-csv", help="formats, comma-separated; '' for none")
    ap.add_argument("--dir", default=None, help="work directory (default: a new temporary directory)")
    args = ap.parse_args()
    res = asyncio.run(run(args))
    total = res["total_s"]
    print(f"\npipeline: {args.protocol} on sim:{args.preset}, analysis {'on' if args.analysis else 'off'}, "
          f"MQTT {args.mqtt}, export {args.export}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    rows = [
        ("cycles run", f"{res['cycles']:,}"),
        ("status", res["status"]),
        ("samples", f"{res['samples']:,}"),
        ("journal commits", f"{res['commits']:,} (COMMIT {res['sync_s']:.1f} s in the worker thread; the engine "
                            f"waited {res['waited_s']:.1f} s for one in flight)"),
        ("MQTT messages published", "-" if res["published"] is None else f"{res['published']:,}"),
        ("until the run ended (engine+journal+analysis+MQTT+export)", f"{res['engine_s']:.1f} s"),
        ("then, side by side: publishing the rest / completing the export",
         f"{total - res['engine_s']:.1f} s (the export: {res['export_s']:.1f} s, {res['files']} files)"),
        ("total wall time", f"{total:.1f} s"),
        ("CPU time, this process (run / export)", f"{res['cpu_run_s']:.1f} s / {res['cpu_export_s']:.1f} s"),
        ("CPU time / peak RSS, MQTT process", f"{res['cpu_mqtt_s']:.1f} s / {res['rss_mqtt_mb']:.0f} MB"
         if res["cpu_mqtt_s"] else "-"),
        ("CPU time, mosquitto", "-" if res["broker_cpu_s"] is None else f"{res['broker_cpu_s']:.1f} s"),
        ("samples/s (total)", f"{res['samples'] / total:,.0f}"),
        ("peak RSS (run / whole benchmark)", f"{res['peak_run_mb']:.0f} MB / {res['peak_rss_mb']:.0f} MB"),
        ("journal size", f"{res['journal_mb']:.0f} MB"),
        ("raw SQLite insert, same rows, same disk, same batching",
         f"{res['raw_s']:.2f} s ({res['raw_rows'] / max(res['raw_s'], 1e-9):,.0f} rows/s)"),
        ("ratio total / raw insert", f"{total / max(res['raw_s'], 1e-9):.1f}x"),
    ]
    w = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"  {a:<{w}}  {b}")
    if res["rss_trace"]:
        print("  RSS along the run: " + ", ".join(f"cycle {c:,}: {m:.0f} MB" for c, m in res["rss_trace"]))
    print(f"  run directory: {res['dir']}")
    if not math.isfinite(total):
        sys.exit(1)


if __name__ == "__main__":
    main()
