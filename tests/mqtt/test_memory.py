"""The publisher's memory is bounded: by a dead subscriber (persistent session, gone), a stalled one
(SIGSTOPped mosquitto_sub), or a broker that is down; the journal is the buffer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tracemalloc

from cyclerctl.mqtt.service import MqttStatus, run_mqtt

from .broker import free_port, start_mosquitto, stop_mosquitto
from .journal_writer import SyntheticJournal

MB = 1 << 20


async def _publish_while_writing(journal, url, status, chunks=12, per_chunk=1000, wait_acked=True) -> int:
    """Run the service (from a journal that may already hold a backlog) while the journal grows by
    chunks; returns the peak of traced memory above the start."""
    stop = asyncio.Event()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    task = asyncio.create_task(run_mqtt(journal.path, url, "mem-test", None, stop, commands="off",
                                        status=status, backoff=(0.2, 0.5), max_inflight=16, read_limit=500))
    for _ in range(chunks):
        journal.write(per_chunk)
        await asyncio.sleep(0.05)
    for _ in range(200 if wait_acked else 0):  # until everything is acknowledged (at most 20 s)
        await asyncio.sleep(0.1)
        if _acked(journal) == journal.n - 1:
            break
    stop.set()
    await asyncio.wait_for(task, 20)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def _acked(journal) -> int:
    rows = journal.db.execute("SELECT MIN(through_seq), COUNT(*) FROM outbox WHERE stream='samples'").fetchone()
    return rows[0] if rows[1] == len(journal.channels) else -1


async def test_dead_and_stalled_subscribers_do_not_grow_publisher_memory(tmp_path):
    proc, port = start_mosquitto(tmp_path / "broker", extra="max_queued_messages 200")
    journal = SyntheticJournal(tmp_path / "journal.sqlite", ["m0", "m1", "m2", "m3"], step_len=5000)
    sub = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", "cycler/v1/#"]
    # dead: persistent session, subscribed, then gone for good
    dead = subprocess.Popen(sub + ["-c", "-i", "dead-sub", "-V", "mqttv5", "-x", "3600"], stdout=subprocess.DEVNULL)
    stalled = subprocess.Popen(sub, stdout=subprocess.PIPE)
    await asyncio.sleep(0.4)
    dead.kill()
    os.kill(stalled.pid, signal.SIGSTOP)  # alive, subscribed, reads nothing: its socket fills up
    status = MqttStatus()
    journal.write(6_000)  # a backlog of 24,000 samples (≈ 2 MB of JSON) plus 1,000 more live
    try:
        peak = await _publish_while_writing(journal, f"mqtt://127.0.0.1:{port}", status, chunks=10, per_chunk=100)
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
        stalled.kill()
        stalled.wait()
        dead.wait()
        stop_mosquitto(proc)
    published_bytes = journal.n * len(journal.channels) * 90  # ≈ JSON bytes per sample
    assert journal.n == 7_000 and _acked(journal) == journal.n - 1, _acked(journal)  # all went through
    assert status.max_inflight_seen <= 16
    # what stays in memory is bounded by max_inflight and read_limit, not by what went through (the
    # JSON encoder's own buffers add a fixed ~0.5 MB: 1.7 MB with 2.4 MB or 6.5 MB published)
    assert peak < 2.0 * MB and published_bytes > 2 * MB, (peak / MB, published_bytes / MB)


async def test_broker_down_keeps_publisher_memory_flat(tmp_path):
    journal = SyntheticJournal(tmp_path / "journal.sqlite", ["d0", "d1"], step_len=5000)
    status = MqttStatus()
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    peak = await _publish_while_writing(journal, url, status, chunks=10, per_chunk=2000, wait_acked=False)
    assert status.connects == 0 and status.last_error
    assert _acked(journal) == -1  # nothing acknowledged; every row is still in the journal
    assert journal.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 2 * 20_000
    assert peak < 4 * MB, peak / MB
