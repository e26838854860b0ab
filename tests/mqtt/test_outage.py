"""Broker outage: mosquitto is killed (SIGKILL) for 31 s in the middle of a run at 10 Hz and restarted on
the same port. A historian-style subscriber (persistent session, de-duplication by seq, replay requests
for gaps) ends with every seq of every channel exactly once; the journal is what the run wrote, with
or without a broker."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cyclerctl.mqtt.service import MqttStatus, run_mqtt

from .broker import start_mosquitto, stop_mosquitto
from .journal_writer import SyntheticJournal

NODE = "rack-7"
BASE = f"cycler/v1/{NODE}"
OUTAGE_S = 31.0


class Historian:
    """Archive side: keeps every (ch, seq) once, reconnects with a fresh client, asks for replays."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: dict[str, set[int]] = {}
        self.duplicates = 0
        self.replayed = 0
        self.connects = 0
        self.client: aiomqtt.Client | None = None

    def missing(self, ch: str, n: int) -> list[tuple[int, int]]:
        seen, out, start = self.seen.get(ch, set()), [], None
        for s in range(n):
            if s not in seen and start is None:
                start = s
            if s in seen and start is not None:
                out.append((start, s - 1))
                start = None
        if start is not None:
            out.append((start, n - 1))
        return out

    async def run(self, stop: asyncio.Event) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        while not stop.is_set():
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier="historian-1", clean_start=False,
                                          protocol=aiomqtt.ProtocolVersion.V5, properties=props,
                                          timeout=3) as c:
                    self.client = c
                    self.connects += 1
                    await c.subscribe(f"{BASE}/ch/+/data", qos=1)
                    await c.subscribe(f"{BASE}/ch/+/replay", qos=1)
                    async for m in c.messages:
                        batch = json.loads(m.payload)
                        seen = self.seen.setdefault(batch["ch"], set())
                        self.replayed += bool(batch.get("replay"))
                        for s in range(batch["seq"], batch["seq"] + batch["n"]):
                            if s in seen:
                                self.duplicates += 1
                            seen.add(s)
            except aiomqtt.MqttError:
                self.client = None
                await asyncio.sleep(0.5)

    async def request_replay(self, ch: str, lo: int, hi: int) -> None:
        cmd = {"v": 1, "req": uuid.uuid4().hex, "not_after": time.time() + 30,
               "args": {"from_seq": lo, "to_seq": hi}}
        await self.client.publish(f"{BASE}/ch/{ch}/cmd/replay", json.dumps(cmd), qos=1)


@pytest.mark.slow
async def test_broker_killed_for_31_s_subscriber_ends_with_every_seq_once(tmp_path):
    proc, port = start_mosquitto(tmp_path / "broker-1")
    channels = ["c0", "c1", "c2"]
    journal = SyntheticJournal(tmp_path / "journal.sqlite", channels, rate=10.0, step_len=40)
    stop_run, stop_hist = asyncio.Event(), asyncio.Event()
    status = MqttStatus()
    historian = Historian(port)
    hist_task = asyncio.create_task(historian.run(stop_hist))
    await asyncio.sleep(0.3)
    service = asyncio.create_task(run_mqtt(journal.path, f"mqtt://127.0.0.1:{port}", NODE, None, stop_run,
                                           commands="open", status=status, backoff=(0.25, 1.0)))

    async def writer(seconds: float) -> None:
        t0 = time.monotonic()
        for k in range(int(seconds * 10)):
            await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.1 - time.monotonic()))
            journal.write(1)

    try:
        await writer(3.0)
        assert status.connected and historian.seen
        stop_mosquitto(proc, kill=True)                         # broker dies mid-run
        await writer(OUTAGE_S)                                  # the run goes on meanwhile
        assert not status.connected
        proc, _ = start_mosquitto(tmp_path / "broker-2", port=port)  # back on the same port
        await writer(4.0)
        # wait for everything to be acknowledged, then let the historian fill any gap by replay
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            gaps = {ch: historian.missing(ch, journal.n) for ch in channels}
            if not any(gaps.values()):
                break
            if historian.client is not None and time.monotonic() > deadline - 15:
                for ch, ranges in gaps.items():
                    for lo, hi in ranges:
                        await historian.request_replay(ch, lo, hi)
                await asyncio.sleep(1.0)
    finally:
        stop_run.set()
        await asyncio.wait_for(service, 15)
        stop_hist.set()
        if historian.client is not None:
            hist_task.cancel()
        await asyncio.gather(hist_task, return_exceptions=True)
        stop_mosquitto(proc)

    assert journal.n >= 380
    for ch in channels:
        assert historian.missing(ch, journal.n) == [], ch
        assert sorted(historian.seen[ch]) == list(range(journal.n))   # every seq exactly once after dedup
    assert status.connects >= 2 and "lost" in status.history
    assert historian.replayed > 0           # the outage backlog came back on .../replay
    # the run is not disturbed: the journal holds exactly the signal the run produces without a broker
    db = sqlite3.connect(journal.path)
    for ch in channels:
        rows = db.execute("SELECT seq, voltage_volt, current_ampere, step_count FROM samples WHERE ch=? "
                          "ORDER BY seq", (ch,)).fetchall()
        j = channels.index(ch)
        expected = []
        for i in range(journal.n):
            v, cur, _, step, _, _ = SyntheticJournal.signal(i, 40, 10.0)
            expected.append((i, v + 1e-3 * j, cur, step))
        assert rows == expected
    outbox = dict(((c, s), q) for c, s, q in db.execute("SELECT ch, stream, through_seq FROM outbox"))
    assert all(outbox[(ch, "samples")] == journal.n - 1 for ch in channels)
