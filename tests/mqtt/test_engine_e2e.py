"""End to end with the real engine: `cyclerctl run ... --mqtt mqtt://user:pass@127.0.0.1:PORT`.

- A simulated run is published to mosquitto; an independent client (mosquitto_sub as viewer) gets
  every sample, event and metric, and every payload validates.
- The same run with the broker unreachable throughout journals exactly the same rows: the broker's
  state never disturbs the run.
- An operator pauses and stops a running channel over MQTT; a viewer cannot; the audit log says who.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from pathlib import Path

import aiomqtt
import pytest

from cyclerctl.mqtt import schemas

from .broker import MosquittoSub, free_port
from .conftest import NODE

PROTOCOL = Path(__file__).resolve().parent / "data" / "short_cycle.yaml"
pytestmark = pytest.mark.slow


async def cyclerctl(*args: str) -> int:
    """The `cyclerctl` command line, run in a worker thread of this process (its own event loop)."""
    from cyclerctl.cli import main

    return await asyncio.to_thread(main, list(args))


def journal_rows(run_dir: Path) -> dict[str, list]:
    db = sqlite3.connect(run_dir / "journal.sqlite")
    return {
        "samples": db.execute("SELECT * FROM samples ORDER BY ch, seq").fetchall(),
        "events": db.execute("SELECT ch, seq, kind, test_time_second, cycle_count, step_count, sample_seq "
                             "FROM events ORDER BY ch, seq").fetchall(),
        "metrics": db.execute("SELECT ch, seq, kind, test_time_second, cycle_count, data FROM metrics "
                              "ORDER BY ch, seq").fetchall(),
    }


async def test_engine_run_published_to_mosquitto_and_undisturbed_by_the_broker(mosquitto_auth, tmp_path):
    common = [str(PROTOCOL), "--instrument", "sim:hard_carbon", "--speed", "max", "--seed", "7", "--no-metrics",
              "--node", NODE]
    with MosquittoSub(mosquitto_auth.port, [f"cycler/v1/{NODE}/#"], tmp_path, "viewer",
                      mosquitto_auth.users["viewer"]) as sub:
        await cyclerctl("run", *common, "--mqtt", mosquitto_auth.url(NODE), "--out", str(tmp_path / "published"))
        await asyncio.sleep(0.5)
    down = f"mqtt://{NODE}:x@127.0.0.1:{free_port()}"
    await cyclerctl("run", *common, "--mqtt", down, "--out", str(tmp_path / "broker-down"))

    reference = journal_rows(tmp_path / "broker-down")
    assert len(reference["samples"]) > 200 and len(reference["metrics"]) >= 2
    assert journal_rows(tmp_path / "published") == reference

    run = sqlite3.connect(tmp_path / "published" / "journal.sqlite").execute("SELECT run FROM channels").fetchone()[0]
    samples, events, metrics = set(), set(), set()
    for topic, text in sub.messages():
        kind = schemas.kind_of_topic(topic[len(f"cycler/v1/{NODE}/"):])
        assert "NaN" not in text and "Infinity" not in text, topic
        payload = json.loads(text)
        assert kind and schemas.errors(kind, payload) == [], (topic, payload)
        if payload.get("run") != run:
            continue  # retained messages of an earlier test
        if kind == "data":
            samples.update((payload["ch"], s) for s in range(payload["seq"], payload["seq"] + payload["n"]))
        elif kind == "event":
            events.add((payload["ch"], payload["seq"]))
        elif kind == "metric" and not topic.endswith("/latest"):
            metrics.add((payload["ch"], payload["seq"]))
    assert samples == {(r[0], r[1]) for r in reference["samples"]}
    assert events == {(r[0], r[1]) for r in reference["events"]}
    assert metrics == {(r[0], r[1]) for r in reference["metrics"]}


async def test_operator_pauses_and_stops_a_running_engine_viewer_cannot(mosquitto_auth, tmp_path):
    base = f"cycler/v1/{NODE}"
    run_dir = tmp_path / "run"
    engine = asyncio.create_task(cyclerctl(
        "run", str(PROTOCOL), "--instrument", "sim:hard_carbon", "--speed", "20", "--no-metrics",
        "--node", NODE, "--mqtt", mosquitto_auth.url(NODE), "--out", str(run_dir)))

    def client(user):
        return aiomqtt.Client("127.0.0.1", mosquitto_auth.port, username=user, password=mosquitto_auth.users[user],
                              protocol=aiomqtt.ProtocolVersion.V5)

    async def ask(c, verb, req):
        cmd = {"v": 1, "req": req, "not_after": time.time() + 30, "actor": "alice",
               "reply_to": f"{base}/reply/alice"}
        await c.publish(f"{base}/ch/ch1/cmd/{verb}", json.dumps(cmd), qos=1)
        async with asyncio.timeout(10):
            async for m in c.messages:
                body = json.loads(m.payload)
                if str(m.topic) == f"{base}/reply/alice" and body.get("req") == req:
                    return body

    try:
        async with client("operator") as op:
            await op.subscribe(f"{base}/status", qos=1)
            await op.subscribe(f"{base}/reply/alice", qos=1)
            async with asyncio.timeout(30):  # the node is up once its session is online
                async for m in op.messages:
                    if str(m.topic) == f"{base}/status" and json.loads(m.payload)["state"] == "online" and \
                            (run_dir / "journal.sqlite").exists():
                        break
            async with client("viewer") as viewer:
                await viewer.publish(f"{base}/ch/ch1/cmd/stop", json.dumps(
                    {"v": 1, "req": "viewer-stop", "not_after": time.time() + 30}), qos=1)
            paused = await ask(op, "pause", f"pause-{uuid.uuid4().hex[:6]}")
            assert paused["ok"] is True, paused
            stopped = await ask(op, "stop", "stop-1")
            assert stopped["ok"] is True, stopped
    finally:
        await asyncio.wait_for(engine, 120)  # the stop (or the end of the protocol) ends the run
    audit = sqlite3.connect(run_dir / "journal.sqlite").execute(
        "SELECT ch, action, actor, source, request_id, result FROM audit ORDER BY id").fetchall()
    assert [(a[1], a[2], a[3]) for a in audit] == [("pause", "alice", "mqtt"), ("stop", "alice", "mqtt")]
    assert audit[1][4] == "stop-1" and audit[0][5].startswith("ok")
    assert "viewer-stop" not in {a[4] for a in audit}
