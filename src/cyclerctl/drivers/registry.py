"""Instrument specs -> Channel objects.

Spec strings (command line and bench files):
  sim                               the simulated cycler with the default preset (hard_carbon)
  sim:PRESET                        a shipped preset name (sim/*.yaml) or a path to a preset file
  keithley2450:RESOURCE             a VISA resource, e.g. TCPIP0::10.0.0.5::5025::SOCKET
  emstat:PORT                       a serial port (/dev/ttyACM0) or tcp://host:port
Thermostat specs (--chamber, bench `chamber:`): espec:tcp://host:port, espec:/dev/ttyUSB0,
meerstetter:/dev/ttyUSB0, meerstetter:tcp://host:port (open_thermostat); the engine wraps the channel in
drivers.thermostat_channel.ThermostatChannel to run SetTemperature steps on the chamber. `sim` names
the simulated cycler's built-in chamber (nothing to open).

Instrument factories identify the instrument when they build the channel, so capabilities.real_hardware
is known before open(): a simulated instrument (cyclerctl sim-instrument) says real_hardware=False.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..clock import Clock
from ..errors import ConfigError
from ..program import Cell


@dataclass(frozen=True)
class InstrumentSpec:
    kind: str  # "sim", "keithley2450", "emstat", ...
    address: str  # preset for sim, VISA resource / port otherwise

    @classmethod
    def parse(cls, text: str) -> InstrumentSpec:
        text = text.strip()
        if not text:
            raise ConfigError("empty --instrument; use sim, sim:PRESET, keithley2450:RESOURCE or emstat:PORT")
        kind, _, address = text.partition(":")
        kind = kind.lower()
        if kind not in _FACTORIES:
            raise ConfigError(
                f"unknown instrument {kind!r} in {text!r}; known: {', '.join(sorted(_FACTORIES))}")
        return cls(kind, address)


def _sim(spec: InstrumentSpec, clock: Clock, cell: Cell | None, **options):
    from ..sim.channel import SimChannel  # the simulator owns its channel

    return SimChannel(preset=spec.address or "hard_carbon", clock=clock, cell=cell, **options)


def _keithley2450(spec: InstrumentSpec, clock: Clock, cell: Cell | None, **options):
    from .keithley2450 import open_keithley

    return open_keithley(spec, clock, cell, **options)


def _emstat(spec: InstrumentSpec, clock: Clock, cell: Cell | None, **options):
    from .emstat import open_emstat

    return open_emstat(spec, clock, cell, **options)


_FACTORIES = {"sim": _sim, "keithley2450": _keithley2450, "emstat": _emstat}


def register(kind: str, factory) -> None:
    """Add an instrument family: factory(spec, clock, cell, **options) -> Channel."""
    _FACTORIES[kind] = factory


_THERMOSTATS: dict = {}


def register_thermostat(kind: str, factory) -> None:
    """Add a thermostat family: factory(address, clock, **options) -> Thermostat."""
    _THERMOSTATS[kind] = factory


def check_thermostat_spec(spec: str) -> tuple[str, str]:
    """(kind, address) of a chamber spec; ConfigError (one line) for an unknown kind or no address."""
    text = spec.strip()
    kind, _, address = text.partition(":")
    kind = kind.lower()
    _load_thermostats(kind)
    if kind not in _THERMOSTATS:
        known = ", ".join(sorted({"espec", "meerstetter", *_THERMOSTATS}))
        raise ConfigError(f"unknown chamber {kind!r} in {text!r}; known: {known} (e.g. espec:tcp://HOST:10001, "
                          f"espec:/dev/ttyUSB0, meerstetter:/dev/ttyUSB0)")
    if not address.strip():
        raise ConfigError(f"chamber {text!r} needs an address, e.g. {kind}:tcp://HOST:PORT or {kind}:/dev/ttyUSB0")
    return kind, address.strip()


def _load_thermostats(kind: str) -> None:
    if kind == "espec" and kind not in _THERMOSTATS:
        from .espec import open_espec

        register_thermostat("espec", open_espec)
    if kind == "meerstetter" and kind not in _THERMOSTATS:
        from .meerstetter import open_meerstetter

        register_thermostat("meerstetter", open_meerstetter)


def open_thermostat(spec: str, clock: Clock, **options):
    """Build (not yet open) the Thermostat for a --chamber spec such as espec:tcp://host:port."""
    kind, address = check_thermostat_spec(spec)
    return _THERMOSTATS[kind](address, clock, **options)


def open_channel(spec: str | InstrumentSpec, clock: Clock, cell: Cell | None = None, **options):
    """Build (not yet open) the Channel for an instrument spec."""
    s = spec if isinstance(spec, InstrumentSpec) else InstrumentSpec.parse(spec)
    return _FACTORIES[s.kind](s, clock, cell, **options)
