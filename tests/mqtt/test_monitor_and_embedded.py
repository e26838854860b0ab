"""`cyclerctl monitor --once` against a live node on mosquitto, and the embedded (amqtt, MQTT 3.1.1)
broker of the demo carrying data and commands."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiomqtt

from cyclerctl.mqtt import schemas
from cyclerctl.mqtt.broker import EmbeddedBroker
from cyclerctl.mqtt.monitor import MonitorModel
from cyclerctl.mqtt.service import run_mqtt

from .broker import start_mosquitto, stop_mosquitto
from .conftest import NODE


async def monitor_once(url: str, *extra: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cyclerctl.cli", "monitor", "--mqtt", url, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={"COLUMNS": "200", "PATH": ""})
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


async def test_monitor_once_shows_every_channel_of_a_running_node(tmp_path, journal, control):
    proc, port = start_mosquitto(tmp_path / "broker")  # a broker of its own: no retained channels of others
    url = f"mqtt://127.0.0.1:{port}"
    journal.write(120)  # three cycles: capacity and CE metrics exist
    journal.set_state("b2", "paused")
    stop = asyncio.Event()
    task = asyncio.create_task(run_mqtt(journal.path, url, NODE, control, stop))

    async def keep_writing():
        while not stop.is_set():
            await asyncio.sleep(0.1)
            journal.write(1)

    writer = asyncio.create_task(keep_writing())
    try:
        code, out, err = await monitor_once(url, "--once", "--window", "1.5")
    finally:
        stop.set()
        await writer
        await asyncio.wait_for(task, 10)
        stop_mosquitto(proc)
    assert code == 0, err
    lines = {ln.split("│")[2].strip(): ln for ln in out.splitlines() if ln.count("│") > 10 and NODE in ln}
    assert set(lines) == {"a1", "b2"}
    assert "paused" in lines["b2"] and "running" in lines["a1"]
    assert "98.00" in lines["a1"]  # CE of the last cycle from metric/cycle/latest
    assert "mAh" in lines["a1"]


async def test_monitor_errors_are_one_line(capsys):
    from cyclerctl.cli import main

    from .broker import free_port

    code = await asyncio.to_thread(main, ["monitor", "--mqtt", "http://nowhere", "--once"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: bad broker URL") and len(err.strip().splitlines()) == 1
    code = await asyncio.to_thread(main, ["monitor", "--mqtt", f"mqtt://127.0.0.1:{free_port()}", "--once"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: cannot read from broker") and len(err.strip().splitlines()) == 1


def test_monitor_model_ignores_a_stale_will():
    m = MonitorModel()
    m.feed("cycler/v1/n1/status", b'{"v":1,"state":"online","sess":5}')
    m.feed("cycler/v1/n1/status", b'{"v":1,"state":"lost","sess":4}')  # will of an older session
    assert m.nodes["n1"]["state"] == "online"
    m.feed("cycler/v1/n1/status", b'{"v":1,"state":"lost","sess":5}')
    assert m.nodes["n1"]["state"] == "lost"


async def test_embedded_broker_carries_data_and_commands_over_mqtt_311(journal, control):
    journal.write(30)
    async with EmbeddedBroker() as broker:
        assert broker.url.endswith("?protocol=3.1.1")
        stop = asyncio.Event()
        task = asyncio.create_task(run_mqtt(journal.path, broker.url, "demo", control, stop, commands="open"))
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V311) as c:
            await c.subscribe("cycler/v1/demo/#", qos=1)
            for _ in range(5):
                await asyncio.sleep(0.1)
                journal.write(1)
            cmd = {"v": 1, "req": "demo-1", "not_after": time.time() + 30, "reply_to": "cycler/v1/demo/reply/me"}
            await c.publish("cycler/v1/demo/ch/a1/cmd/pause", json.dumps(cmd), qos=1)
            seen, reply = set(), None
            async with asyncio.timeout(10):
                async for m in c.messages:
                    body = json.loads(m.payload)
                    kind = schemas.kind_of_topic(str(m.topic)[len("cycler/v1/demo/"):])
                    if kind and str(m.topic) != "cycler/v1/demo/reply/me":
                        assert schemas.errors(kind, body) == [], m.topic
                    if str(m.topic).endswith("/a1/data") or str(m.topic).endswith("/a1/replay"):
                        seen.update(range(body["seq"], body["seq"] + body["n"]))
                    if str(m.topic) == "cycler/v1/demo/reply/me":
                        reply = body
                    if reply and seen >= set(range(35)):
                        break
        stop.set()
        await asyncio.wait_for(task, 10)
    assert reply["ok"] is True and reply["req"] == "demo-1" and schemas.errors("reply", reply) == []
    assert control.calls[0][:2] == ("pause", "a1")
