"""Espec chamber controllers (P-300, SCP-220, SH/EHS/ESL series): the ASCII protocol over serial or TCP,
as a Thermostat.

Commands end in CR LF. `TEMP?` answers `PV,SP,upper,lower` (degC); `TEMP, S25.0` sets the setpoint,
`MODE,CONSTANT` runs to it, `MODE,STANDBY` stops heating and cooling. Setting commands answer `OK:...`;
refusals answer `NA:<reason>` (`NA:CMD ERR`, `NA:PARA ERR`, `NA:DATA OUT OF RANGE`, `NA:PROTECT ON`),
which become one-line InstrumentErrors. RS-485 controllers need an `<address>,` prefix (option `address`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
from typing import Any

from ..clock import Clock
from ..errors import ConfigError, InstrumentError
from .envelope import check_speed, load_envelope, simulated
from .retry import retrying

log = logging.getLogger(__name__)

_NA = {
    "CMD ERR": "unknown command",
    "PARA ERR": "bad parameter",
    "DATA OUT OF RANGE": "value out of the chamber's range",
    "PROTECT ON": "the controller is write-protected (keypad lock)",
    "DATA NOT READY": "data not ready",
}
_SIM_SPEED = re.compile(r"cyclerctl-sim speed=(\S+)")


def decode_na(reply: str) -> str:
    """'NA:DATA OUT OF RANGE' -> 'value out of the chamber's range (NA:DATA OUT OF RANGE)'."""
    reason = reply[3:].strip()
    return f"{_NA.get(reason, reason.lower() or 'refused')} ({reply.strip()})"


class EspecChamber:
    """A Thermostat on an Espec controller at `address` (tcp://host:port or a serial port)."""

    def __init__(self, address: str, clock: Clock, *, timeout: float = 2.0, retries: int = 3,
                 rs485_address: int | None = None, baudrate: int = 9600, name: str | None = None) -> None:
        self.url = f"socket://{address[6:]}" if address.startswith("tcp://") else address
        self.clock = clock
        self.name = name or f"espec:{address}"
        self.timeout = timeout
        self.retries = retries
        self.prefix = f"{rs485_address}," if rs485_address is not None else ""
        self.baudrate = baudrate
        self.capabilities = load_envelope("espec")
        self.instrument_speed: float | None = None
        self._ser: Any = None
        self._lock = threading.Lock()
        self.last_command = ""

    # ---- transport (worker threads) ---------------------------------------------------------------

    def _connect(self) -> None:
        import serial

        if self._ser is not None:
            return
        try:
            self._ser = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=self.timeout)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise InstrumentError(f"cannot connect ({str(exc).splitlines()[0]})", self.url, transient=True) from exc

    def disconnect(self) -> None:
        """Close the link now (blocking; e.g. after identify() when the run is refused)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except Exception:  # noqa: BLE001
                pass

    def _ask(self, command: str) -> str:
        with self._lock:
            self.last_command = command
            self._connect()
            try:
                self._ser.reset_input_buffer()
                self._ser.write((self.prefix + command + "\r\n").encode("ascii"))
                line = self._ser.read_until(b"\n")
            except Exception as exc:
                self._drop()
                raise InstrumentError(f"link failed ({exc})", self.url, command, transient=True) from exc
            if not line.endswith(b"\n"):
                self._drop()
                raise InstrumentError(f"no reply within {self.timeout:g} s", self.url, command, transient=True)
            reply = line.decode("ascii", "replace").strip()
            if reply.startswith("NA:"):
                raise InstrumentError(f"chamber refused: {decode_na(reply)}", self.url, command)
            return reply

    async def _call(self, command: str) -> str:
        async def attempt() -> str:
            return await asyncio.to_thread(self._ask, command)

        async def recover() -> None:
            await asyncio.to_thread(self._drop)

        return await retrying(attempt, self.clock, retries=self.retries, recover=recover)

    # ---- Thermostat ----------------------------------------------------------------------------------

    def _identity(self, rom: str) -> None:
        m = _SIM_SPEED.search(rom)
        self.instrument_speed = (math.inf if m.group(1) == "max" else float(m.group(1))) if m else None
        if self.instrument_speed is not None and self.capabilities.real_hardware:
            self.capabilities = simulated(self.capabilities)

    def identify(self) -> None:
        """Ask the controller who it is (blocking, once, before the run): a simulated chamber
        advertises its --speed in `ROM?`, and the capabilities then say real_hardware=False."""
        self._identity(self._ask("ROM?"))

    async def open(self) -> None:
        self._identity(await self._call("ROM?"))
        check_speed(self.name, self.instrument_speed, self.clock.speed)

    async def set_temperature(self, kelvin: float) -> None:
        lo, hi = self.capabilities.temperature_range or (-math.inf, math.inf)
        if not lo <= kelvin <= hi:
            raise ConfigError(f"{kelvin - 273.15:.1f} degC is outside the chamber's range "
                              f"[{lo - 273.15:.0f}, {hi - 273.15:.0f}] degC")
        reply = await self._call(f"TEMP, S{kelvin - 273.15:.1f}")
        if not reply.startswith("OK"):
            raise InstrumentError(f"unexpected reply {reply!r}", self.url, self.last_command)
        await self._call("MODE,CONSTANT")

    async def read_temperature(self) -> float:
        reply = await self._call("TEMP?")
        try:
            return float(reply.split(",")[0]) + 273.15
        except ValueError as exc:
            raise InstrumentError(f"unreadable temperature {reply!r}", self.url, "TEMP?") from exc

    async def safe_state(self) -> None:
        try:
            await self._call("MODE,STANDBY")
        except InstrumentError as exc:
            log.error("could not put %s in standby: %s", self.name, exc)

    async def close(self) -> None:
        await asyncio.to_thread(self._drop)


def open_espec(address: str, clock: Clock, **options) -> EspecChamber:
    """Registry factory: espec:tcp://host:port or espec:/dev/ttyUSB0."""
    if not address:
        raise ConfigError("espec needs an address, e.g. espec:tcp://127.0.0.1:10001 or espec:/dev/ttyUSB0")
    return EspecChamber(address, clock, **options)
