"""The MQTT service in a process of its own (what `cyclerctl run` uses).

- It publishes every committed sample of the journal to the broker and reports how many messages.
- A command from the broker is carried out by the engine's RunControl in the parent process, and the
  reply goes back to the sender.
- It stops when its standard input closes (the engine's process died), so it never lingers.
- Given the journal writer's feeds, it gets each commit's rows over a pipe and publishes them live
  (every sample once, the journal's values) without reading them back.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import aiomqtt
import numpy as np

from cyclerctl.mqtt.process import run_mqtt_process
from cyclerctl.store import schema
from cyclerctl.store.journal import Journal

from .broker import MosquittoSub
from .test_feed import sample_rows

NODE = "proc-node"


async def test_the_child_publishes_the_committed_journal(mosquitto_anon, journal, tmp_path):
    journal.write(120)
    stop = asyncio.Event()
    with MosquittoSub(mosquitto_anon.port, [f"cycler/v1/{NODE}/#"], tmp_path) as sub:
        task = asyncio.create_task(run_mqtt_process(journal.path, mosquitto_anon.url(), NODE, None, stop,
                                                    commands="off"))
        await asyncio.sleep(2.0)
        stop.set()
        status = await asyncio.wait_for(task, 30)
        await asyncio.sleep(0.3)
    seen = {(p["ch"], s) for topic, text in sub.messages() if topic.endswith(("/data", "/replay"))  # committed before the connect: backlog
            for p in [json.loads(text)] for s in range(p["seq"], p["seq"] + p["n"])}
    assert seen == {(ch, s) for ch in ("a1", "b2") for s in range(120)}
    assert status.published >= 4 and status.connects == 1 and not status.connected


async def test_a_command_is_carried_out_by_the_parents_control(mosquitto_anon, journal, control):
    journal.write(10)
    stop = asyncio.Event()
    task = asyncio.create_task(run_mqtt_process(journal.path, mosquitto_anon.url(), NODE, control, stop,
                                                commands="open"))
    try:
        async with aiomqtt.Client("127.0.0.1", mosquitto_anon.port, identifier="operator") as op:
            await op.subscribe(f"cycler/v1/{NODE}/reply", qos=1)
            await asyncio.sleep(1.5)  # the child is connected and subscribed
            cmd = {"v": 1, "req": "r-1", "not_after": time.time() + 30, "args": {}, "actor": "alice"}
            await op.publish(f"cycler/v1/{NODE}/ch/a1/cmd/pause", json.dumps(cmd), qos=1)
            async with asyncio.timeout(10):
                async for message in op.messages:
                    reply = json.loads(message.payload)
                    if reply.get("req") == "r-1":
                        break
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert reply["ok"] is True, reply
    assert control.calls[-1][:2] == ("pause", "a1")


def test_the_child_stops_when_its_standard_input_closes(journal):
    cfg = {"journal": str(journal.path), "url": "mqtt://127.0.0.1:1", "node": NODE, "commands": "off"}
    proc = subprocess.Popen([sys.executable, "-m", "cyclerctl.mqtt.process", json.dumps(cfg)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    proc.stdin.close()
    proc.wait(timeout=30)
    out = proc.stdout.read()
    lines = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0
    assert lines[-1]["op"] == "done" and lines[-1]["connected"] is False


async def test_committed_rows_reach_the_child_over_its_feed(mosquitto_anon, tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    journal.set_meta({"run_id": "feed-run"})
    journal.add_channel("a1", "feed-run", {}, None, lambda *_: ("running", "{}", None))
    rng = np.random.default_rng(5)
    stop = asyncio.Event()
    blocks = []
    with MosquittoSub(mosquitto_anon.port, [f"cycler/v1/{NODE}/ch/a1/data"], tmp_path) as sub:
        task = asyncio.create_task(run_mqtt_process(journal.path, mosquitto_anon.url(), NODE, None, stop,
                                                    commands="off", feeds=journal.feeds))
        await asyncio.sleep(1.5)  # connected: what follows is live
        first = 0
        for n in (300, 1, 2500, 40):
            blocks.append(sample_rows(first, n, 230, rng))
            journal.stage_samples("a1", blocks[-1])
            await journal.commit()
            first += n
            await asyncio.sleep(0.3)
        await asyncio.sleep(1.0)
        stop.set()
        status = await asyncio.wait_for(task, 30)
        await asyncio.sleep(0.3)
    journal.close()
    assert status.fed == 4 and journal.feeds == []
    got = {}
    for _, text in sub.messages():
        p = json.loads(text)
        for k in range(p["n"]):
            assert p["seq"] + k not in got
            got[p["seq"] + k] = p["cols"]["voltage_volt"][k]
    want = np.concatenate(blocks)[:, schema.SAMPLE_COLUMNS.index("voltage_volt")]
    assert sorted(got) == list(range(len(want)))
    np.testing.assert_array_equal([got[k] for k in range(len(want))], want)
