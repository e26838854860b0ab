"""Start a real mosquitto for tests (importable by every test area).

    proc, port = start_mosquitto(tmp_path)                       # anonymous loopback broker
    proc, port = start_mosquitto(tmp_path, users={"operator": "pw"}, acl=ACL_TEXT)

A missing mosquitto is an error, not a skip: CI must have it installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED_ACL = REPO / "deploy" / "mosquitto" / "acl"


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{port} within {deadline} s")


def write_config(workdir: Path, port: int, users: dict[str, str] | None = None, acl: str | None = None,
                 extra: str = "") -> Path:
    """mosquitto.conf for one loopback listener; with `users` a password file (mosquitto_passwd) and
    anonymous access off; `acl` is the ACL text (the shipped deploy/mosquitto/acl when users are given)."""
    workdir.mkdir(parents=True, exist_ok=True)
    lines = ["per_listener_settings false", f"listener {port} 127.0.0.1",
             f"persistence_location {workdir}/", "log_dest stdout", "log_type error",
             "log_type warning"]
    if os.geteuid() == 0:
        lines.append("user root")
    if users:
        passwd = workdir / "passwd"
        passwd.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
        subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
        aclfile = workdir / "acl"
        aclfile.write_text(acl if acl is not None else SHIPPED_ACL.read_text())
        lines += ["allow_anonymous false", f"password_file {passwd}", f"acl_file {aclfile}"]
    else:
        lines.append("allow_anonymous true")
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n" + extra + "\n")
    return conf


def start_mosquitto(workdir: Path, port: int | None = None, users: dict[str, str] | None = None,
                    acl: str | None = None, extra: str = "") -> tuple[subprocess.Popen, int]:
    """Start mosquitto on 127.0.0.1 (a free port unless given) and wait until it listens."""
    port = port or free_port()
    conf = write_config(Path(workdir), port, users, acl, extra)
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, proc)
    except Exception:
        proc.kill()
        raise
    return proc, port


def stop_mosquitto(proc: subprocess.Popen, kill: bool = False) -> None:
    if proc.poll() is None:
        proc.kill() if kill else proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class MosquittoSub:
    """mosquitto_sub (an independent client) writing `topic payload` lines to a file.

    with MosquittoSub(port, ["cycler/v1/#"], user="viewer", password="pw") as sub:
        ...
    sub.messages() -> [(topic, payload)]"""

    def __init__(self, port: int, topics: list[str], workdir: Path, user: str | None = None,
                 password: str | None = None, qos: int = 1) -> None:
        self.out = Path(workdir) / f"sub-{free_port()}.txt"
        cmd = ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5",
               "-q", str(qos), "-v"]
        if user:
            cmd += ["-u", user, "-P", password or ""]
        for t in topics:
            cmd += ["-t", t]
        self.cmd = cmd

    def __enter__(self) -> MosquittoSub:
        self._fh = open(self.out, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._fh, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)  # connected and subscribed
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto_sub exited: {self.proc.stderr.read()}")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self._fh.close()

    def messages(self) -> list[tuple[str, str]]:
        out = []
        for line in self.out.read_text().split("\n"):
            if line:
                topic, _, payload = line.partition(" ")
                out.append((topic, payload))
        return out
