"""Commands through a real mosquitto with the shipped password file + ACL: anonymous clients cannot
connect, a viewer cannot command, an operator can (and the audit log records it), malformed or
expired commands change nothing, replay serves any range from the journal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cyclerctl.mqtt import schemas
from cyclerctl.mqtt.service import run_mqtt

from .conftest import NODE

BASE = f"cycler/v1/{NODE}"


def client(broker, user=None, **kw) -> aiomqtt.Client:
    creds = {} if user is None else {"username": user, "password": broker.users[user]}
    return aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=5, **creds, **kw)


def command(req: str | None = None, expires_in: float = 30.0, **args) -> dict:
    return {"v": 1, "req": req or uuid.uuid4().hex, "not_after": time.time() + expires_in, "args": args,
            "actor": "alice"}


async def ask(c: aiomqtt.Client, topic: str, payload, reply_topic: str, timeout: float = 5.0) -> dict:
    """Publish a command with MQTT 5 response topic + correlation data; wait for its reply."""
    corr = uuid.uuid4().bytes
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_topic
    props.CorrelationData = corr
    props.MessageExpiryInterval = 30
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await c.publish(topic, body, qos=1, properties=props)
    async with asyncio.timeout(timeout):
        async for m in c.messages:
            if m.properties is not None and getattr(m.properties, "CorrelationData", None) == corr:
                reply = json.loads(m.payload)
                assert schemas.errors("reply", reply) == []
                return reply
    raise AssertionError("no reply")


@contextlib.asynccontextmanager
async def node(broker, journal, control, user=NODE, **kw):
    stop = asyncio.Event()
    task = asyncio.create_task(run_mqtt(journal.path, broker.url(user), NODE, control, stop, **kw))
    await asyncio.sleep(0.5)
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def audit(journal) -> list[tuple]:
    return sqlite3.connect(journal.path).execute(
        "SELECT ch, action, actor, source, request_id, result FROM audit ORDER BY id").fetchall()


async def test_anonymous_client_cannot_even_connect(mosquitto_auth):
    with pytest.raises(aiomqtt.MqttError):
        async with client(mosquitto_auth):
            pass


async def test_viewer_cannot_pause_operator_can_and_audit_records_it(mosquitto_auth, journal, control):
    journal.write(20)
    reply_topic = f"{BASE}/reply/op-{uuid.uuid4().hex[:6]}"
    async with node(mosquitto_auth, journal, control):
        async with client(mosquitto_auth, "viewer") as viewer:
            await viewer.publish(f"{BASE}/ch/a1/cmd/pause", json.dumps(command("from-viewer")), qos=1)
        async with client(mosquitto_auth, "operator") as op:
            await op.subscribe(f"{BASE}/reply/#", qos=1)
            reply = await ask(op, f"{BASE}/ch/a1/cmd/pause", command("op-1"), reply_topic)
            assert reply["ok"] is True and reply["req"] == "op-1" and reply["ch"] == "a1"
            # the same request delivered twice is carried out once
            again = await ask(op, f"{BASE}/ch/a1/cmd/pause", command("op-1"), reply_topic)
            assert again["ok"] is True
            # pausing a paused channel is refused by the run control, and audited as refused
            second = await ask(op, f"{BASE}/cmd/pause", command("op-2", ch="a1"), reply_topic)
            assert second["ok"] is False and "paused" in second["error"]
            resumed = await ask(op, f"{BASE}/ch/a1/cmd/resume", command("op-3"), reply_topic)
            assert resumed["ok"] is True
    assert [c[:5] for c in control.calls] == [("pause", "a1", "alice", "mqtt", "op-1"),
                                              ("pause", "a1", "alice", "mqtt", "op-2"),
                                              ("resume", "a1", "alice", "mqtt", "op-3")]
    rows = audit(journal)
    assert [r[4] for r in rows] == ["op-1", "op-2", "op-3"]  # nothing from the viewer
    assert rows[0][:4] == ("a1", "pause", "alice", "mqtt") and rows[0][5] == "ok"


@pytest.mark.parametrize("topic, payload, error", [
    ("ch/a1/cmd/pause", b"not json", "not JSON"),
    ("ch/a1/cmd/pause", {"v": 1, "args": {}}, "req"),
    ("ch/a1/cmd/pause", {"v": 1, "req": "x1", "args": {}}, "not_after"),
    ("ch/a1/cmd/pause", {"v": 1, "req": "x2", "not_after": 1.0, "args": {}}, "expired"),
    ("ch/a1/cmd/pause", {"v": 1, "req": "x3", "not_after": 4e9, "args": {"force": True}}, "unknown argument"),
    ("ch/zz/cmd/pause", {"v": 1, "req": "x4", "not_after": 4e9}, "unknown channel"),
    ("cmd/pause", {"v": 1, "req": "x5", "not_after": 4e9}, "needs args.ch"),
    ("cmd/format-disk", {"v": 1, "req": "x6", "not_after": 4e9}, "unknown command"),
    ("ch/a1/cmd/replay", {"v": 1, "req": "x7", "not_after": 4e9, "args": {"from_seq": 5, "to_seq": 1}}, "after"),
    ("ch/a1/cmd/replay", {"v": 1, "req": "x8", "not_after": 4e9, "args": {"from_seq": 0, "to_seq": 10**6}},
     "beyond"),
    ("ch/a1/cmd/replay", {"v": 1, "req": "x9", "not_after": 4e9, "args": {"from_seq": "0"}}, "integer"),
])
async def test_malformed_commands_get_an_error_reply_and_change_nothing(mosquitto_auth, journal, control,
                                                                        topic, payload, error):
    journal.write(20)
    async with node(mosquitto_auth, journal, control):
        async with client(mosquitto_auth, "operator") as op:
            await op.subscribe(f"{BASE}/reply/#", qos=1)
            reply = await ask(op, f"{BASE}/{topic}", payload, f"{BASE}/reply/t")
    assert reply["ok"] is False and error in reply["error"]
    assert control.calls == [] and audit(journal) == []


async def test_anonymous_node_connection_refuses_commands(mosquitto_anon, journal, control):
    journal.write(20)
    async with node(mosquitto_anon, journal, control, user=None):
        async with client(mosquitto_anon) as anyone:
            await anyone.subscribe(f"{BASE}/reply/#", qos=1)
            reply = await ask(anyone, f"{BASE}/ch/a1/cmd/pause", command(), f"{BASE}/reply/x")
    assert reply["ok"] is False and "anonymous" in reply["error"]
    assert control.calls == []


async def test_replay_serves_a_range_from_the_journal(mosquitto_auth, journal, control):
    journal.write(120)
    async with node(mosquitto_auth, journal, control):
        async with client(mosquitto_auth, "historian") as hist:
            await hist.subscribe(f"{BASE}/ch/b2/replay", qos=1)
            await hist.subscribe(f"{BASE}/reply/#", qos=1)
            async with asyncio.timeout(20):  # let the start-up backlog pass: all 120 samples acknowledged
                while sqlite3.connect(journal.path).execute(
                        "SELECT through_seq FROM outbox WHERE ch='b2' AND stream='samples'").fetchone() != (119,):
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            reply = await ask(hist, f"{BASE}/ch/b2/cmd/replay", command(from_seq=30, to_seq=79), f"{BASE}/reply/h")
            assert reply["ok"] is True
            seqs: list[int] = []
            async with asyncio.timeout(5):
                async for m in hist.messages:
                    batch = json.loads(m.payload)
                    if batch.get("replay") and batch["seq"] >= 30:
                        assert schemas.errors("data", batch) == []
                        seqs += range(batch["seq"], batch["seq"] + batch["n"])
                    if seqs and seqs[-1] == 79:
                        break
    assert seqs == list(range(30, 80))
