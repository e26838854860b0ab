"""Capability envelopes: what an instrument can do, read from the shipped drivers/*.yaml files.

An envelope file names the model, the techniques and the ranges with units, e.g.
`voltage_range: [-21 V, 21 V]`; the compiler checks a protocol against the resulting
`Capabilities` before a run."""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import yaml

from .. import units
from ..channel import Capabilities
from ..errors import ConfigError
from ..paths import resolve_data_file

_RANGES = {"voltage_range": "voltage", "scan_rate_range": "scan_rate", "frequency_range": "frequency",
           "temperature_range": "temperature"}
_SCALARS = {"current_max": "current", "current_resolution": "current", "voltage_resolution": "voltage",
            "min_sample_period": "time"}


@cache
def load_envelope(name: str) -> Capabilities:
    """The Capabilities of a shipped envelope (`keithley2450`, `emstat4_hr`, ...) or a YAML path."""
    try:
        path = resolve_data_file(name, "drivers")
    except FileNotFoundError as exc:
        raise ConfigError(f"no capability envelope {name!r} in drivers/") from exc
    data = yaml.safe_load(path.read_text()) or {}
    env = data.get("envelope", data)
    kwargs: dict = {"model": str(env.get("model", name))}
    try:
        if "techniques" in env:
            kwargs["techniques"] = frozenset(env["techniques"])
        for key, kind in _RANGES.items():
            if key in env:
                lo, hi = units.parse_list(env[key], kind)
                kwargs[key] = (lo, hi)
        for key, kind in _SCALARS.items():
            if key in env:
                kwargs[key] = units.parse(env[key], kind)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path.name}: {exc}") from exc
    kwargs["real_hardware"] = bool(env.get("real_hardware", True))
    return Capabilities(**kwargs)


def simulated(caps: Capabilities) -> Capabilities:
    """The same envelope for a simulated instrument (the engine then accepts --speed N)."""
    return replace(caps, real_hardware=False, model=caps.model + " (simulated)")


def check_speed(name: str, instrument_speed: float | None, clock_speed: float) -> None:
    """A simulated instrument must run at the host's --speed; real hardware only at speed 1."""
    import math

    if instrument_speed is None:
        if clock_speed != 1:
            raise ConfigError(f"{name} is real hardware: it runs only at --speed 1")
    elif not (instrument_speed == clock_speed or math.isclose(instrument_speed, clock_speed, rel_tol=1e-9)):
        run = "max" if math.isinf(clock_speed) else f"{clock_speed:g}"
        raise ConfigError(f"the simulated instrument {name} runs at --speed {instrument_speed:g} but this run "
                          f"at {run}; start both with the same --speed")
