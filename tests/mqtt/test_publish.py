"""A simulated run published to a real mosquitto: an independent client (mosquitto_sub, logged in as
the read-only viewer) receives data, events and metrics, and every payload validates."""

from __future__ import annotations

import asyncio
import json
import sqlite3

from cyclerctl.mqtt import schemas
from cyclerctl.mqtt.service import MqttStatus, run_mqtt

from .broker import MosquittoSub
from .conftest import NODE


def strict_json(text: str):
    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=no_constant)


async def write_live(journal, seconds: float, rate: float = 10.0) -> None:
    for _ in range(int(seconds * rate)):
        await asyncio.sleep(1 / rate)
        journal.write(1)


async def test_independent_subscriber_gets_everything_and_payloads_validate(mosquitto_auth, journal, control,
                                                                           tmp_path):
    journal.write(60)  # committed before the publisher starts: goes out as backlog on .../replay
    status = MqttStatus()
    with MosquittoSub(mosquitto_auth.port, [f"cycler/v1/{NODE}/#"], tmp_path, "viewer",
                      mosquitto_auth.users["viewer"]) as sub:
        stop = asyncio.Event()
        task = asyncio.create_task(run_mqtt(journal.path, mosquitto_auth.url(NODE), NODE, control, stop,
                                            status=status))
        await write_live(journal, 2.5)
        journal.set_state("a1", "paused")
        await asyncio.sleep(1.2)
        stop.set()
        await asyncio.wait_for(task, 10)
        await asyncio.sleep(0.3)
    messages = sub.messages()
    assert status.connects == 1 and status.last_error is None and status.echo

    kinds: dict[str, int] = {}
    for topic, text in messages:
        kind = schemas.kind_of_topic(topic[len(f"cycler/v1/{NODE}/"):])
        assert kind is not None, topic
        payload = strict_json(text)
        assert schemas.errors(kind, payload) == [], (topic, payload)
        kinds[kind] = kinds.get(kind, 0) + 1
    assert {"status", "birth", "desc", "state", "data", "event", "metric"} <= set(kinds)

    db = sqlite3.connect(journal.path)
    for ch in ("a1", "b2"):
        live = [strict_json(p) for t, p in messages if t.endswith(f"/ch/{ch}/data")]
        replay = [strict_json(p) for t, p in messages if t.endswith(f"/ch/{ch}/replay")]
        assert live and replay and all(b["replay"] for b in replay)
        seen = {}
        for batch in live + replay:
            rows = db.execute("SELECT seq, voltage_volt, step_count, cycle_count FROM samples "
                              "WHERE ch=? AND seq>=? AND seq<? ORDER BY seq",
                              (ch, batch["seq"], batch["seq"] + batch["n"])).fetchall()
            assert [r[1] for r in rows] == batch["cols"]["voltage_volt"]
            assert {(r[2], r[3]) for r in rows} == {(batch["step_count"], batch["cycle_count"])}  # one step
            for r in rows:
                seen[r[0]] = seen.get(r[0], 0) + 1
        assert sorted(seen) == list(range(journal.n)) and set(seen.values()) == {1}

        events = sorted(strict_json(p)["seq"] for t, p in messages if t.endswith(f"/ch/{ch}/event"))
        assert events == list(range(journal.events[ch]))
        metrics = sorted(strict_json(p)["seq"] for t, p in messages if t.endswith(f"/ch/{ch}/metric/cycle"))
        assert metrics == list(range(journal.metrics[ch]))
        # NaN temperatures in the journal arrive as null, never as NaN
        assert any(None in b["cols"].get("temperature_t1_celsius", [0]) for b in live + replay)

    states = [strict_json(p) for t, p in messages if t.endswith("/ch/a1/state")]
    assert states[-1]["state"] == "paused" and states[-1]["seq"] == journal.n - 1
    statuses = [strict_json(p) for t, p in messages if t.endswith("/status")]
    ours = [s["state"] for s in statuses if s["sess"] == status.sess]  # a retained one may precede
    assert ours == ["online", "offline"]
    outbox = dict(((ch, s), seq) for ch, s, seq in db.execute("SELECT ch, stream, through_seq FROM outbox"))
    assert outbox[("a1", "samples")] == journal.n - 1 and outbox[("b2", "events")] == journal.events["b2"] - 1


async def test_retained_topics_give_a_late_subscriber_the_current_picture(mosquitto_auth, journal, control,
                                                                         tmp_path):
    journal.write(30)
    stop = asyncio.Event()
    task = asyncio.create_task(run_mqtt(journal.path, mosquitto_auth.url(NODE), NODE, control, stop))
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(task, 10)
    with MosquittoSub(mosquitto_auth.port, [f"cycler/v1/{NODE}/#"], tmp_path, "viewer",
                      mosquitto_auth.users["viewer"]) as sub:
        await asyncio.sleep(0.5)
    retained = {t: strict_json(p) for t, p in sub.messages()}
    assert retained[f"cycler/v1/{NODE}/status"]["state"] == "offline"
    assert [c["ch"] for c in retained[f"cycler/v1/{NODE}/birth"]["channels"]] == ["a1", "b2"]
    assert retained[f"cycler/v1/{NODE}/ch/b2/desc"]["columns"]["voltage_volt"] == "V"
    assert retained[f"cycler/v1/{NODE}/ch/b2/state"]["seq"] == 29
    assert retained[f"cycler/v1/{NODE}/ch/b2/metric/cycle/latest"]["seq"] == journal.metrics["b2"] - 1
    assert not any(t.endswith("/data") for t in retained)  # data is never retained


async def test_a_killed_node_leaves_lost_with_its_own_session(mosquitto_anon, journal, tmp_path):
    """The last will: status 'lost' carrying the session of the connection that died, so a consumer
    can tell it from a stale will of an older session."""
    import os
    import signal
    import sys

    journal.write(10)
    code = ("import asyncio, sys\n"
            "from cyclerctl.mqtt.service import run_mqtt\n"
            f"asyncio.run(run_mqtt({str(journal.path)!r}, {mosquitto_anon.url()!r}, 'doomed', None, asyncio.Event()))\n")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    with MosquittoSub(mosquitto_anon.port, ["cycler/v1/doomed/status"], tmp_path) as sub:
        async with asyncio.timeout(30):
            while not any('"online"' in p for _, p in sub.messages()):
                await asyncio.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        async with asyncio.timeout(10):
            while not any('"lost"' in p for _, p in sub.messages()):
                await asyncio.sleep(0.1)
    statuses = [strict_json(p) for _, p in sub.messages()]
    online = next(s for s in statuses if s["state"] == "online")
    lost = statuses[-1]
    assert lost["state"] == "lost" and lost["sess"] == online["sess"]
    assert all(schemas.errors("status", s) == [] for s in statuses)


async def test_a_node_name_the_acl_does_not_allow_is_noticed(mosquitto_auth, journal):
    """Logged in as test-node but publishing as other-node: mosquitto drops the publishes (ACL), and the
    node notices that its own status never comes back."""
    stop, status = asyncio.Event(), MqttStatus()
    task = asyncio.create_task(run_mqtt(journal.path, mosquitto_auth.url(NODE), "other-node", None, stop,
                                        status=status))
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.wait_for(task, 20)
    assert status.connects == 1 and not status.echo
