"""Meerstetter TEC controllers (TEC-1089/1091/1092, a Peltier stage under a coin cell) over MeCom, as a
Thermostat. USB-serial at 57600 Bd, or TCP.

Frame: `#` + address (2 hex) + sequence (4 hex) + payload + CRC-16/CCITT (poly 0x1021, init 0, over
everything before it; 4 hex) + CR. Read a parameter: payload `?VR` + id (4 hex) + instance (2 hex); the
reply is `!` + address + sequence + value (8 hex: IEEE-754 float or int32) + CRC. Write: `VS` + id +
instance + value; the reply is an acknowledgement `!` + address + sequence + CRC. An error reply carries
`+` and a 2-hex code. Parameters: 1000 object temperature, 3000 target object temperature, 1200
"temperature is stable" (0 off, 1 not stable, 2 stable), 2010 output stage enable.
"""

from __future__ import annotations

import asyncio
import re
import struct
import threading
from typing import Any

from ..clock import Clock
from ..errors import ConfigError, InstrumentError
from .envelope import check_speed, load_envelope, simulated
from .retry import retrying

OBJECT_TEMPERATURE = 1000
TARGET_TEMPERATURE = 3000
TEMPERATURE_STABLE = 1200
OUTPUT_ENABLE = 2010
DEVICE_TYPE = 100
SIM_SPEED = 9999  # a simulated stage advertises its --speed here (x1000, int)

ERRORS = {1: "command not available", 2: "device busy", 3: "general communication error", 4: "format error",
          5: "parameter not available", 6: "parameter not writable", 7: "parameter out of range",
          8: "parameter instance not available"}
_REPLY = re.compile(r"^!(?P<addr>[0-9A-F]{2})(?P<seq>[0-9A-F]{4})(?P<body>[0-9A-F+]*)(?P<crc>[0-9A-F]{4})$")


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT (XMODEM): polynomial 0x1021, initial value 0, no reflection."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def frame(start: str, address: int, sequence: int, payload: str) -> str:
    """A complete frame without the CR: start + address + sequence + payload + CRC."""
    body = f"{start}{address:02X}{sequence:04X}{payload}"
    return body + f"{crc16_ccitt(body.encode('ascii')):04X}"


def encode_value(value: float | int, kind: str) -> str:
    if kind == "float":
        return struct.pack(">f", float(value)).hex().upper()
    return f"{int(value) & 0xFFFFFFFF:08X}"


def decode_value(text: str, kind: str) -> float | int:
    raw = bytes.fromhex(text)
    return struct.unpack(">f", raw)[0] if kind == "float" else struct.unpack(">i", raw)[0]


def check_frame(line: str) -> re.Match:
    """A reply frame with a valid CRC, parsed; ValueError otherwise."""
    m = _REPLY.match(line.strip())
    if not m:
        raise ValueError(f"not a MeCom reply: {line[:30]!r}")
    body = line.strip()[:-4]
    if crc16_ccitt(body.encode("ascii")) != int(m.group("crc"), 16):
        raise ValueError(f"bad checksum in {line[:30]!r}")
    return m


class MeerstetterTEC:
    """A Thermostat on a Meerstetter TEC controller at `address` (tcp://host:port or a serial port)."""

    def __init__(self, address: str, clock: Clock, *, device_address: int = 1, instance: int = 1,
                 timeout: float = 1.0, retries: int = 3, name: str | None = None) -> None:
        self.url = f"socket://{address[6:]}" if address.startswith("tcp://") else address
        self.clock = clock
        self.name = name or f"meerstetter:{address}"
        self.device_address = device_address
        self.instance = instance
        self.timeout = timeout
        self.retries = retries
        self.instrument_speed: float | None = None
        self.capabilities = load_envelope("meerstetter")
        self._seq = 0
        self._ser: Any = None
        self._lock = threading.Lock()
        self.last_command = ""

    def _connect(self) -> None:
        import serial

        if self._ser is None:
            try:
                self._ser = serial.serial_for_url(self.url, baudrate=57600, timeout=self.timeout)
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

    def _transact(self, payload: str) -> re.Match:
        with self._lock:
            self._seq = (self._seq + 1) & 0xFFFF
            request = frame("#", self.device_address, self._seq, payload)
            self.last_command = request
            self._connect()
            try:
                self._ser.reset_input_buffer()
                self._ser.write((request + "\r").encode("ascii"))
                line = self._ser.read_until(b"\r").decode("ascii", "replace")
            except Exception as exc:
                self._drop()
                raise InstrumentError(f"link failed ({exc})", self.url, request, transient=True) from exc
            if not line.endswith("\r"):
                self._drop()
                raise InstrumentError(f"no reply within {self.timeout:g} s", self.url, request, transient=True)
            try:
                m = check_frame(line)
            except ValueError as exc:
                raise InstrumentError(str(exc), self.url, request, transient=True) from exc
            if int(m.group("seq"), 16) != self._seq:
                raise InstrumentError("reply to another request (sequence mismatch)", self.url, request, transient=True)
            if m.group("body").startswith("+"):
                code = int(m.group("body")[1:3], 16)
                raise InstrumentError(f"controller error {code}: {ERRORS.get(code, 'unknown')}", self.url, request)
            return m

    async def _call(self, payload: str) -> re.Match:
        async def attempt():
            return await asyncio.to_thread(self._transact, payload)

        async def recover():
            await asyncio.to_thread(self._drop)

        return await retrying(attempt, self.clock, retries=self.retries, recover=recover)

    async def get(self, parameter: int, kind: str = "float") -> float | int:
        m = await self._call(f"?VR{parameter:04X}{self.instance:02X}")
        return decode_value(m.group("body"), kind)

    async def put(self, parameter: int, value: float | int, kind: str = "float") -> None:
        await self._call(f"VS{parameter:04X}{self.instance:02X}{encode_value(value, kind)}")

    # ---- Thermostat ----------------------------------------------------------------------------

    def _identity(self, speed: int | None) -> None:
        self.instrument_speed = None if speed is None else speed / 1000.0
        if self.instrument_speed is not None and self.capabilities.real_hardware:
            self.capabilities = simulated(self.capabilities)

    def identify(self) -> None:
        """Ask the controller (blocking, once, before the run) for the parameter a simulated stage
        advertises its --speed in; a real controller answers "parameter not available"."""
        try:
            m = self._transact(f"?VR{SIM_SPEED:04X}{self.instance:02X}")
            self._identity(int(decode_value(m.group("body"), "int")))
        except InstrumentError as exc:
            if "not available" not in exc.message:
                raise
            self._identity(None)

    async def open(self) -> None:
        try:
            self._identity(int(await self.get(SIM_SPEED, "int")))
        except InstrumentError as exc:
            if "not available" not in exc.message:
                raise
            self._identity(None)  # a real controller has no such parameter
        check_speed(self.name, self.instrument_speed, self.clock.speed)

    async def set_temperature(self, kelvin: float) -> None:
        lo, hi = self.capabilities.temperature_range or (223.15, 373.15)
        if not lo <= kelvin <= hi:
            raise ConfigError(f"{kelvin - 273.15:.1f} degC is outside the TEC stage's range [-50, 100] degC")
        await self.put(TARGET_TEMPERATURE, kelvin - 273.15)
        await self.put(OUTPUT_ENABLE, 1, "int")

    async def read_temperature(self) -> float:
        return float(await self.get(OBJECT_TEMPERATURE)) + 273.15

    async def is_stable(self) -> bool:
        """The controller's own "temperature is stable" flag."""
        return int(await self.get(TEMPERATURE_STABLE, "int")) == 2

    async def safe_state(self) -> None:
        try:
            await self.put(OUTPUT_ENABLE, 0, "int")
        except InstrumentError:
            pass

    async def close(self) -> None:
        await asyncio.to_thread(self._drop)


def open_meerstetter(address: str, clock: Clock, **options) -> MeerstetterTEC:
    """Registry factory: meerstetter:/dev/ttyUSB0 or meerstetter:tcp://host:50000."""
    if not address:
        raise ConfigError("meerstetter needs an address, e.g. meerstetter:/dev/ttyUSB0 or meerstetter:tcp://host:50000")
    return MeerstetterTEC(address, clock, **options)


__all__ = ["MeerstetterTEC", "crc16_ccitt", "decode_value", "encode_value", "frame", "open_meerstetter"]
