"""JSON Schemas (draft 2020-12) of every payload, shipped in ``cyclerctl/mqtt/schemas/*.json``."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

NAMES = ("status", "birth", "desc", "state", "data", "event", "metric", "command", "reply")


@cache
def schema(name: str) -> dict:
    """The schema of one payload kind (see NAMES)."""
    if name not in NAMES:
        raise KeyError(f"no payload schema {name!r}; known: {', '.join(NAMES)}")
    text = resources.files("cyclerctl.mqtt").joinpath("schemas", f"{name}.json").read_text()
    return json.loads(text)


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    s = schema(name)
    cls = jsonschema.validators.validator_for(s)
    cls.check_schema(s)
    return cls(s)


def errors(name: str, payload: Any) -> list[str]:
    """Why `payload` does not match schema `name` (empty list when it does)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator(name).iter_errors(payload)]


def kind_of_topic(rest: str) -> str | None:
    """Payload kind of a topic below ``{root}/{node}/``: 'status', 'ch/a1/data' -> 'data', ..."""
    parts = rest.split("/")
    if parts == ["status"] or parts == ["birth"] or parts == ["reply"]:
        return parts[0]
    if len(parts) == 2 and parts[0] == "cmd":
        return "command"
    if len(parts) >= 3 and parts[0] == "ch":
        leaf = parts[2]
        if leaf in ("desc", "state", "data", "event"):
            return leaf if len(parts) == 3 else None
        if leaf == "replay" and len(parts) == 3:
            return "data"
        if leaf == "metric" and len(parts) in (4, 5):
            return "metric"
        if leaf == "cmd" and len(parts) == 4:
            return "command"
    return None
