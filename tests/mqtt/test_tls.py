"""The shipped deploy/mosquitto/mosquitto.conf, with only its paths and ports moved into a temporary
directory on loopback, accepts a node over TLS (mqtts:// with the lab CA) and a viewer, and refuses
anonymous clients."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess

import aiomqtt
import pytest

from cyclerctl.mqtt.service import MqttStatus, run_mqtt

from .broker import REPO, free_port, mosquitto_binary, stop_mosquitto, wait_port
from .conftest import NODE, USERS


def make_certs(d) -> None:
    """A lab CA and a broker certificate for 127.0.0.1, as in deploy/mosquitto/README.md."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-days", "2", "-subj", "/CN=lab CA",
        "-keyout", "lab-ca.key", "-out", "lab-ca.crt")
    run("req", "-new", "-nodes", "-newkey", "rsa:2048", "-subj", "/CN=127.0.0.1", "-keyout", "broker.key",
        "-out", "broker.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "broker.csr", "-CA", "lab-ca.crt", "-CAkey", "lab-ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "broker.crt")


@pytest.fixture
def shipped_broker(tmp_path):
    make_certs(tmp_path)
    passwd = tmp_path / "passwd"
    passwd.write_text("".join(f"{u}:{p}\n" for u, p in USERS.items()))
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
    plain, tls = free_port(), free_port()
    conf = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    conf = conf.replace("listener 1883 127.0.0.1", f"listener {plain} 127.0.0.1")
    conf = re.sub(r"^listener 8883$", f"listener {tls} 127.0.0.1", conf, flags=re.M)
    conf = conf.replace("/etc/mosquitto/certs/", f"{tmp_path}/").replace("/etc/mosquitto/passwd", str(passwd))
    conf = conf.replace("/etc/mosquitto/acl", str(REPO / "deploy" / "mosquitto" / "acl"))
    conf = conf.replace("/var/lib/mosquitto/", f"{tmp_path}/")
    settings = [ln for ln in conf.splitlines() if ln and not ln.startswith("#")]
    assert not any("/etc/" in ln or "/var/" in ln for ln in settings), settings
    if os.geteuid() == 0:
        conf += "user root\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(tmp_path / "mosquitto.conf")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_port(plain, proc)
    wait_port(tls, proc)
    yield plain, tls, tmp_path / "lab-ca.crt"
    stop_mosquitto(proc)


async def test_shipped_config_takes_a_node_over_tls_and_refuses_anonymous(shipped_broker, journal, tmp_path):
    plain, tls, ca = shipped_broker
    journal.write(40)
    sub = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(tls), "--cafile", str(ca),
                            "-u", "viewer", "-P", USERS["viewer"], "-q", "1", "-v", "-t", f"cycler/v1/{NODE}/ch/+/replay"],
                           stdout=subprocess.PIPE, text=True)
    await asyncio.sleep(0.5)
    stop, status = asyncio.Event(), MqttStatus()
    url = f"mqtts://{NODE}:{USERS[NODE]}@127.0.0.1:{tls}?ca={ca}"
    task = asyncio.create_task(run_mqtt(journal.path, url, NODE, None, stop, status=status))
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.wait_for(task, 20)
    await asyncio.sleep(0.3)
    sub.terminate()
    out = sub.communicate()[0]
    assert status.connects == 1 and status.last_error is None
    seqs = sorted(s for line in out.splitlines() for b in [json.loads(line.split(" ", 1)[1])]
                  if b["ch"] == "a1" for s in range(b["seq"], b["seq"] + b["n"]))
    assert seqs == list(range(40))
    with pytest.raises(aiomqtt.MqttError):  # anonymous: refused on the plain listener too
        async with aiomqtt.Client("127.0.0.1", plain, timeout=5):
            pass
