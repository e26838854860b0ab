"""Bench files: one YAML file names the channels of a rack, each with its instrument, cell and protocol.

    node: rack-a                      # MQTT node name (optional)
    defaults:                         # optional, applied to every channel
      instrument: sim:hard_carbon
      protocol: hc_formation_cycling  # a path or the name of a shipped protocol
    channels:
      - name: A1
        cell: cells/a1.yaml           # optional cell file; relative paths are relative to this file
        mass: 3.4 mg                  # optional overrides: mass, area, nominal_capacity
        seed: 1                       # simulator options: seed, noise
      - name: A2
        instrument: keithley2450:TCPIP0::10.0.0.5::5025::SOCKET
        protocol: protocols/hc_gitt_second_cycle.yaml
        chamber: espec:tcp://10.0.0.7:10001  # temperature steps on this chamber; channels naming the
                                             # same chamber share it (one link, one lock)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

CHANNEL_KEYS = {"name", "instrument", "chamber", "protocol", "cell", "mass", "area", "nominal_capacity", "seed",
                "noise"}


@dataclass
class BenchChannel:
    name: str
    instrument: str
    protocol: str
    cell: str | None = None
    chamber: str | None = None  # thermostat spec; channels naming the same chamber share it
    overrides: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    channels: list[BenchChannel]
    node: str | None = None


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value)
    if not p.is_absolute() and (base / p).exists():
        return str(base / p)
    return value


def _chamber(path: Path, k: int, value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() == "sim":
        return text
    from ..drivers.registry import check_thermostat_spec

    try:
        check_thermostat_spec(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: channel #{k + 1}: {exc}") from None
    return text


def load_bench(path: str | Path) -> Bench:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"bench file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("channels"), list) or not doc["channels"]:
        raise ConfigError(f"{path}: a bench file needs a non-empty 'channels:' list")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: 'defaults' must be a mapping")
    base = path.parent
    out = []
    for k, raw in enumerate(doc["channels"]):
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: channel #{k + 1} must be a mapping with name, instrument, protocol")
        c = {**defaults, **raw}
        unknown = set(c) - CHANNEL_KEYS
        if unknown:
            raise ConfigError(f"{path}: channel #{k + 1}: unknown key(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(CHANNEL_KEYS))}")
        for key in ("name", "protocol"):
            if not c.get(key):
                raise ConfigError(f"{path}: channel #{k + 1} has no '{key}'")
        out.append(BenchChannel(
            name=str(c["name"]), instrument=str(c.get("instrument", "sim")),
            protocol=_resolve(base, str(c["protocol"])), cell=_resolve(base, c.get("cell")),
            chamber=_chamber(path, k, c.get("chamber")),
            overrides={key if key != "mass" else "active_mass": str(c[key]) for key in ("mass", "area")
                       if c.get(key) is not None}
            | ({"nominal_specific_capacity": str(c["nominal_capacity"])} if c.get("nominal_capacity") else {}),
            options={key: c[key] for key in ("seed", "noise") if key in c}))
    names = [c.name for c in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{path}: channel names must be unique: {', '.join(sorted(dup))}")
    return Bench(out, doc.get("node"))
