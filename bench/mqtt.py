"""MQTT streaming benchmark: N simulated channels at 10 Hz in wall-clock time through
journal -> publisher -> mosquitto -> subscriber.

Three processes besides mosquitto: a journal writer (one transaction per commit interval, 0.1 s by
default, holding every channel's samples of that interval, each stamped with its own Unix time), the
cyclerctl publisher (`run_mqtt`,
measured for CPU), and mosquitto_sub (an independent C client that stamps each message on receipt).
Latency is receipt time minus the sample's unix_time_second, per sample: it includes the wait for
the commit (up to one commit interval), which is the engine's, not MQTT's.

    .venv/bin/python bench/mqtt.py                   # 64 and 256 channels, 15 s each
    .venv/bin/python bench/mqtt.py --channels 16 --seconds 5
    .venv/bin/python bench/mqtt.py --commit-interval 1     # the engine's default commit interval
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.mqtt.broker import mosquitto_binary, start_mosquitto, stop_mosquitto  # noqa: E402

WRITER = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.mqtt.journal_writer import SyntheticJournal
j = SyntheticJournal({path!r}, [f"c{{i:03d}}" for i in range({n})], rate=10.0, step_len=600)
t0 = time.time()
k = 0
per_commit = max(1, round({commit} / 0.1))
while time.time() < t0 + {seconds}:
    k += per_commit
    time.sleep(max(0.0, t0 + k * 0.1 - time.time()))
    j.write(per_commit)  # samples taken 0.1 s apart, committed together
"""

PUBLISHER = """
import asyncio, signal, sys
sys.path.insert(0, {repo!r})
from cyclerctl.mqtt.service import run_mqtt

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await run_mqtt({path!r}, {url!r}, "bench", None, stop, commands="off")

asyncio.run(main())
"""


def run(n: int, seconds: float, commit: float = 0.1, warmup: float = 3.0) -> dict:
    work = Path(tempfile.mkdtemp(prefix="cyclerctl-bench-"))
    proc, port = start_mosquitto(work / "broker")
    journal = work / "journal.sqlite"
    out = work / "sub.txt"
    sub = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                            "-t", "cycler/v1/bench/ch/+/data", "-F", "%U %p"], stdout=open(out, "w"))
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), path=str(journal), n=n,
                                                                   seconds=warmup + seconds + 0.5, commit=commit)])
    while not journal.exists():
        time.sleep(0.05)
    time.sleep(0.3)
    pub = subprocess.Popen([sys.executable, "-c", PUBLISHER.format(repo=str(REPO), path=str(journal),
                                                                   url=f"mqtt://127.0.0.1:{port}")])
    ps = psutil.Process(pub.pid)
    time.sleep(warmup)
    c0, w0 = ps.cpu_times(), time.monotonic()
    t_start = time.time()
    rss0 = ps.memory_info().rss
    time.sleep(seconds)
    c1, w1 = ps.cpu_times(), time.monotonic()
    t_end = time.time()
    rss1 = ps.memory_info().rss
    writer.wait()
    pub.send_signal(signal.SIGTERM)
    pub.wait(20)
    time.sleep(0.3)
    sub.terminate()
    sub.wait()
    stop_mosquitto(proc)

    lat, msgs, samples = [], 0, 0
    for line in out.read_text().splitlines():
        stamp, _, payload = line.partition(" ")
        received = float(stamp)
        if not t_start <= received < t_end:
            continue
        batch = json.loads(payload)
        msgs += 1
        samples += batch["n"]
        lat.extend(received - t for t in batch["cols"]["unix_time_second"])
    lat_ms = np.asarray(lat) * 1e3
    cpu = (c1.user + c1.system - c0.user - c0.system) / (w1 - w0)
    return {"channels": n, "msg_s": msgs / seconds, "samples_s": samples / seconds,
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "max_ms": float(lat_ms.max()), "cpu": 100 * cpu, "rss_mb": rss1 / 2**20,
            "rss_growth_mb": (rss1 - rss0) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, nargs="*", default=[64, 256])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--commit-interval", type=float, default=0.1, help="s between journal commits")
    args = ap.parse_args()
    rows = [run(n, args.seconds, args.commit_interval) for n in args.channels]
    version = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"\nMQTT streaming, 10 Hz per channel, commits every {args.commit_interval:g} s, "
          f"{args.seconds:g} s measured, {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f} at the end), {version}")
    head = (f"{'channels':>8} {'msg/s':>8} {'samples/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
            f"{'pub CPU %':>10} {'pub RSS MB':>11} {'RSS growth':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['channels']:>8} {r['msg_s']:>8.0f} {r['samples_s']:>10.0f} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} {r['cpu']:>10.1f} {r['rss_mb']:>11.1f} "
              f"{r['rss_growth_mb']:>+10.1f}")


if __name__ == "__main__":
    main()
