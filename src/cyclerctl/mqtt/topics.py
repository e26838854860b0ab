"""The topic tree under ``cycler/v1/{node}`` (docs/mqtt.md is the reference).

Node and channel IDs in topics are Homie-safe ``[a-z0-9-]``; a channel name that is not (``Ch_01``)
is mapped to one (``ch-01``) for its topics, and payloads always carry the real name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

ROOT = "cycler/v1"
VERBS = ("pause", "resume", "stop", "skip", "abort", "replay", "rebirth")
METRIC_KINDS = ("cycle", "rate", "dqdv", "gitt", "ici", "cv", "eis", "arrhenius")
_SAFE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


def topic_id(name: str) -> str:
    """A Homie-safe topic level for a channel or metric name: lower case, [a-z0-9-]."""
    s = re.sub(r"[^a-z0-9-]+", "-", str(name).lower()).strip("-")
    return s or "x"


def check_node(node: str) -> str:
    if not _SAFE.match(node or ""):
        raise ConfigError(f"bad MQTT node name {node!r}: use lower-case letters, digits and '-' "
                          "(e.g. rack-1)")
    return node


@dataclass(frozen=True)
class Topics:
    """Topic names of one node."""

    node: str
    root: str = ROOT

    def __post_init__(self) -> None:
        check_node(self.node)

    @property
    def base(self) -> str:
        return f"{self.root}/{self.node}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def birth(self) -> str:
        return f"{self.base}/birth"

    @property
    def reply(self) -> str:
        """Default reply topic when a command names none."""
        return f"{self.base}/reply"

    def ch(self, ch: str) -> str:
        return f"{self.base}/ch/{topic_id(ch)}"

    def desc(self, ch: str) -> str:
        return f"{self.ch(ch)}/desc"

    def state(self, ch: str) -> str:
        return f"{self.ch(ch)}/state"

    def data(self, ch: str) -> str:
        return f"{self.ch(ch)}/data"

    def replay(self, ch: str) -> str:
        return f"{self.ch(ch)}/replay"

    def event(self, ch: str) -> str:
        return f"{self.ch(ch)}/event"

    def metric(self, ch: str, kind: str) -> str:
        return f"{self.ch(ch)}/metric/{topic_id(kind)}"

    def metric_latest(self, ch: str, kind: str) -> str:
        return f"{self.metric(ch, kind)}/latest"

    @property
    def command_filters(self) -> tuple[str, str]:
        """Subscriptions for node-level and channel-level commands."""
        return f"{self.base}/cmd/+", f"{self.base}/ch/+/cmd/+"

    def parse_command(self, topic: str) -> tuple[str | None, str] | None:
        """(channel topic id or None, verb) of a command topic of this node, else None."""
        rest = topic[len(self.base) + 1:] if topic.startswith(self.base + "/") else None
        if rest is None:
            return None
        parts = rest.split("/")
        if len(parts) == 2 and parts[0] == "cmd":
            return None, parts[1]
        if len(parts) == 4 and parts[0] == "ch" and parts[2] == "cmd":
            return parts[1], parts[3]
        return None


def split_channel_topic(topic: str, root: str = ROOT) -> tuple[str, str, str] | None:
    """(node, channel topic id, rest) of ``{root}/{node}/ch/{ch}/{rest}``, else None."""
    if not topic.startswith(root + "/"):
        return None
    parts = topic[len(root) + 1:].split("/", 3)
    if len(parts) == 4 and parts[1] == "ch":
        return parts[0], parts[2], parts[3]
    return None
