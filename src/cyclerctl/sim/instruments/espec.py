"""A simulated Espec chamber controller: the ASCII protocol on TCP (or a pty), a first-order thermal lag
with a ramp-rate limit, optionally coupled to a cell model (the cell's ambient follows the chamber air).

`TEMP?` -> `PV,SP,upper,lower`; `TEMP, S<degC>` (also H/L alarm limits); `MODE,CONSTANT|STANDBY|OFF`;
`MON?`; `ROM?`; `MODE?`; `POWER,ON`. Errors: `NA:CMD ERR`, `NA:PARA ERR`, `NA:DATA OUT OF RANGE`.
"""

from __future__ import annotations

import math
import threading

from ...clock import Clock
from .faults import Faults
from .transport import Link


class SimEspec:
    def __init__(self, clock: Clock, plant=None, faults: Faults | None = None, ambient: float = 298.15,
                 tau: float = 300.0, ramp: float = 2.0 / 60.0, range_c: tuple[float, float] = (-40.0, 100.0)) -> None:
        self.clock = clock
        self.plant = plant
        self.faults = faults or Faults()
        self.ambient = ambient
        self.tau = tau  # s, first-order lag of the chamber air
        self.ramp = ramp  # K/s, the fastest the controller drives the air
        self.range_c = range_c
        self.temperature = ambient
        self.setpoint = ambient
        self.mode = "STANDBY"
        self.t = clock.now()
        self.t0 = self.t
        self.queries = 0
        self.commands: list[str] = []
        self._lock = threading.Lock()

    def _advance(self) -> None:
        now = self.clock.now()
        while self.t < now:
            dt = min(10.0, now - self.t)
            self.t += dt
            target = self.setpoint if self.mode == "CONSTANT" else self.ambient
            step = (target - self.temperature) * (1 - math.exp(-dt / self.tau))
            self.temperature += max(-self.ramp * dt, min(self.ramp * dt, step))
            if self.plant is not None and hasattr(self.plant, "set_ambient"):
                self.plant.set_ambient(self.pv)

    @property
    def pv(self) -> float:
        """The measured air temperature (K); an unstable chamber swings 1.5 K around it."""
        if self.faults.active("unstable", self.t - self.t0):
            return self.temperature + 1.5 * math.sin(2 * math.pi * (self.t - self.t0) / 900.0)
        return self.temperature

    def on_line(self, line: str, link: Link) -> None:
        with self._lock:
            self.commands.append(line)
            self._advance()
            reply = self._command(line.strip(), link)
        if reply is not None:
            link.write((reply + "\r\n").encode("ascii"))

    def _command(self, line: str, link: Link) -> str | None:
        if "," in line and line.split(",", 1)[0].isdigit():  # RS-485 address prefix
            line = line.split(",", 1)[1]
        head = line.upper().replace(" ", "")
        if head in ("TEMP?", "MON?"):
            self.queries += 1
            fault = self.faults.on_reading(self.queries)
            if fault == "timeout":
                return None
            if fault == "garble":
                return "\x15#,,?"
            if fault == "disconnect":
                link.drop()
                return None
        pv = self.pv - 273.15
        if head == "TEMP?":
            return f"{pv:.1f},{self.setpoint - 273.15:.1f},{self.range_c[1]:.1f},{self.range_c[0]:.1f}"
        if head == "MON?":
            return f"{pv:.1f},0,{self.mode},0"
        if head == "MODE?":
            return self.mode
        if head == "ROM?":
            speed = "max" if math.isinf(self.clock.speed) else f"{self.clock.speed:g}"
            return f"P-300 VER 1.00 cyclerctl-sim speed={speed}"
        if head == "TYPE?":
            return "SCP-220,TEMP"
        if head.startswith("TEMP,S") or head.startswith("TEMP,H") or head.startswith("TEMP,L"):
            try:
                value = float(head[6:])
            except ValueError:
                return "NA:PARA ERR"
            if not self.range_c[0] <= value <= self.range_c[1]:
                return "NA:DATA OUT OF RANGE"
            if head[5] == "S":
                self.setpoint = value + 273.15
            return f"OK: {line}"
        if head.startswith("MODE,"):
            mode = head[5:]
            if mode not in ("CONSTANT", "STANDBY", "OFF"):
                return "NA:PARA ERR"
            self.mode = mode
            return f"OK: {line}"
        if head == "POWER,ON":
            return f"OK: {line}"
        return "NA:CMD ERR"
