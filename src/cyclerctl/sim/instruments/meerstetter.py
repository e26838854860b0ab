"""A simulated Meerstetter TEC controller speaking MeCom (CR-terminated frames with CRC-16/CCITT) on a
pseudo-terminal or TCP: a Peltier stage with a fast first-order lag and the controller's own
"temperature is stable" flag, optionally driving a cell model's ambient temperature.

Parameters: 1000 object temperature, 3000 target (set), 1200 stable flag (0 off, 1 not stable,
2 stable: within 0.1 K for 10 s), 2010 output enable, 100 device type; 9999 advertises --speed x1000.
A frame with a bad checksum is answered with error 3; unknown parameters with error 5."""

from __future__ import annotations

import math
import threading

from ...clock import Clock
from ...drivers.meerstetter import (
    DEVICE_TYPE,
    OBJECT_TEMPERATURE,
    OUTPUT_ENABLE,
    SIM_SPEED,
    TARGET_TEMPERATURE,
    TEMPERATURE_STABLE,
    crc16_ccitt,
    decode_value,
    encode_value,
    frame,
)
from .faults import Faults
from .transport import Link


class SimMeerstetter:
    def __init__(self, clock: Clock, plant=None, faults: Faults | None = None, ambient: float = 298.15,
                 tau: float = 20.0, address: int = 1) -> None:
        self.clock = clock
        self.plant = plant
        self.faults = faults or Faults()
        self.address = address
        self.ambient = ambient
        self.tau = tau
        self.temperature = ambient
        self.target = ambient
        self.enabled = False
        self.t = clock.now()
        self.t0 = self.t
        self.stable_since: float | None = None
        self.frames: list[str] = []
        self._lock = threading.Lock()

    def _advance(self) -> None:
        now = self.clock.now()
        while self.t < now:
            dt = min(1.0, now - self.t)
            self.t += dt
            goal = self.target if self.enabled else self.ambient
            self.temperature += (goal - self.temperature) * (1 - math.exp(-dt / self.tau))
            if self.faults.active("unstable", self.t - self.t0):
                self.temperature = goal + 0.8 * math.sin(2 * math.pi * (self.t - self.t0) / 60.0)
            if self.enabled and abs(self.temperature - self.target) <= 0.1:
                self.stable_since = self.t if self.stable_since is None else self.stable_since
            else:
                self.stable_since = None
            if self.plant is not None:
                self.plant.set_ambient(self.temperature)

    def _stable_flag(self) -> int:
        if not self.enabled:
            return 0
        return 2 if self.stable_since is not None and self.t - self.stable_since >= 10.0 else 1

    def on_line(self, line: str, link: Link) -> None:
        with self._lock:
            self.frames.append(line)
            self._advance()
            reply = self._frame(line.strip())
        if reply is not None:
            link.write((reply + "\r").encode("ascii"))

    def _frame(self, text: str) -> str | None:
        if not text.startswith("#") or len(text) < 11:
            return None
        body, crc = text[:-4], text[-4:]
        try:
            addr, seq = int(text[1:3], 16), int(text[3:7], 16)
        except ValueError:
            return None
        if addr not in (0, self.address):
            return None
        if crc16_ccitt(body.encode("ascii")) != int(crc, 16):
            return frame("!", self.address, seq, "+03")
        payload = body[7:]
        try:
            if payload.startswith("?VR"):
                param, _inst = int(payload[3:7], 16), int(payload[7:9], 16)
                return frame("!", self.address, seq, self._read(param))
            if payload.startswith("VS"):
                param, _inst = int(payload[2:6], 16), int(payload[6:8], 16)
                self._write(param, payload[8:16])
                return frame("!", self.address, seq, "")
        except KeyError:
            return frame("!", self.address, seq, "+05")
        except ValueError:
            return frame("!", self.address, seq, "+07")
        return frame("!", self.address, seq, "+01")

    def _read(self, param: int) -> str:
        values = {
            OBJECT_TEMPERATURE: (self.temperature - 273.15, "float"),
            TARGET_TEMPERATURE: (self.target - 273.15, "float"),
            TEMPERATURE_STABLE: (self._stable_flag(), "int"),
            OUTPUT_ENABLE: (int(self.enabled), "int"),
            DEVICE_TYPE: (1091, "int"),
            SIM_SPEED: (int(round(self.clock.speed * 1000)), "int"),
        }
        value, kind = values[param]
        return encode_value(value, kind)

    def _write(self, param: int, text: str) -> None:
        if param == TARGET_TEMPERATURE:
            celsius = decode_value(text, "float")
            if not -50.0 <= celsius <= 100.0:
                raise ValueError("out of range")
            self.target = celsius + 273.15
        elif param == OUTPUT_ENABLE:
            self.enabled = bool(decode_value(text, "int"))
        else:
            raise KeyError(param)
