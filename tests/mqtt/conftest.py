"""Fixtures of the MQTT tests: a real mosquitto with the shipped ACL and a password file, an anonymous
one, and a synthetic run journal."""

from __future__ import annotations

import pytest

from .broker import start_mosquitto, stop_mosquitto
from .journal_writer import FakeRunControl, SyntheticJournal

USERS = {"test-node": "node-pw", "operator": "op-pw", "viewer": "view-pw", "historian": "hist-pw"}
NODE = "test-node"


class Broker:
    def __init__(self, proc, port, users):
        self.proc, self.port, self.users = proc, port, users

    def url(self, user: str | None = None) -> str:
        if user is None:
            return f"mqtt://127.0.0.1:{self.port}"
        return f"mqtt://{user}:{self.users[user]}@127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def mosquitto_auth(tmp_path_factory):
    """mosquitto with allow_anonymous false, a password file and the shipped deploy/mosquitto/acl."""
    proc, port = start_mosquitto(tmp_path_factory.mktemp("mosquitto-auth"), users=USERS)
    yield Broker(proc, port, USERS)
    stop_mosquitto(proc)


@pytest.fixture(scope="session")
def mosquitto_anon(tmp_path_factory):
    """mosquitto accepting anonymous clients on loopback."""
    proc, port = start_mosquitto(tmp_path_factory.mktemp("mosquitto-anon"))
    yield Broker(proc, port, {})
    stop_mosquitto(proc)


@pytest.fixture
def journal(tmp_path):
    j = SyntheticJournal(tmp_path / "journal.sqlite", ["a1", "b2"])
    yield j
    j.close()


@pytest.fixture
def control(journal):
    return FakeRunControl(journal.path)
