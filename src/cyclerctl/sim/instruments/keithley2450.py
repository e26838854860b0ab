"""A simulated Keithley 2450 speaking SCPI on a TCP socket (port 5025 style), driven by the cell model.

Implements the subset a cycler uses: *IDN?, *LANG?, *RST, *CLS, source function/level/limits (with
their TRIP? flags), readback, sense function/range/NPLC/remote sense, output and output-off mode,
:READ? "defbuffer1", READ, SOUR, REL and the error queue (-113 undefined header, -222 out of range,
-109 missing parameter). Long and short SCPI forms are accepted, case-insensitively.

Physics: between commands the source state is constant, so the cell is advanced to the instrument
clock in small steps under that state. A current source whose terminal voltage would pass its voltage
limit clamps at the limit (and reports TRIP 1); a voltage source whose current would pass its current
limit clamps at that current. Output off in HIMP mode leaves the cell at open circuit; output off in
NORMAL mode puts 0 V across it, as the real instrument does (the cell counts as wired to the terminals
from the first command a client sends). A reading takes NPLC/50 s of instrument time.
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque

from ...clock import Clock
from ..kernel import Q_PASSED
from .base import PlantDriver, block_until
from .faults import Faults
from .transport import Link

_LONG = {
    "SOURCE": "SOUR", "CURRENT": "CURR", "VOLTAGE": "VOLT", "FUNCTION": "FUNC", "LEVEL": "LEV",
    "VLIMIT": "VLIM", "ILIMIT": "ILIM", "TRIPPED": "TRIP", "RANGE": "RANG", "READBACK": "BACK",
    "SENSE": "SENS", "RSENSE": "RSEN", "OUTPUT": "OUTP", "SMODE": "SMOD", "SYSTEM": "SYST",
    "ERROR": "ERR", "NEXT": "NEXT", "STATE": "STAT", "AMPLITUDE": "AMPL",
}
_OFF_MODES = {"HIMP": "HIMP", "HIMPEDANCE": "HIMP", "NORM": "NORM", "NORMAL": "NORM", "ZERO": "ZERO",
              "GUAR": "GUAR", "GUARD": "GUAR"}


APERTURE_PIECES = 8  # a reading integrates the cell's response over its aperture in this many pieces
AUTO_DELAY = 1e-3  # s, the automatic source delay (the 2450's for its lower ranges is about a millisecond)


class ScpiError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


def normalise(header: str) -> str:
    """':SOURce:CURRent:LEVel:IMMediate' -> 'SOUR:CURR'; '[:SENSe]' optional roots resolved."""
    parts = [p for p in header.strip().lstrip(":").upper().split(":") if p]
    short = [_LONG.get(p, p) for p in parts]
    short = [p for p in short if p not in ("LEV", "IMM", "IMMEDIATE", "AMPL", "DC")]
    if short and short[0] in ("VOLT", "CURR") and len(short) > 1 and short[1] in ("NPLC", "RSEN", "RANG"):
        short.insert(0, "SENS")
    if short[-2:] == ["ERR", "NEXT"]:
        short = short[:-1]
    return ":".join(short)


def _bool(arg: str) -> bool:
    a = arg.strip().upper()
    if a in ("ON", "1"):
        return True
    if a in ("OFF", "0"):
        return False
    raise ScpiError(-224, "Illegal parameter value")


class SimKeithley2450:
    """The instrument's state machine; `on_line` is the transport's line handler."""

    def __init__(self, plant, clock: Clock, faults: Faults | None = None, serial: str = "04500001",
                 noise: float = 0.0, seed: int = 0) -> None:
        self.clock = clock
        self.cell = PlantDriver(plant, clock)
        self.faults = faults or Faults()
        self.serial = serial
        self._lock = threading.RLock()
        self.stop = threading.Event()
        self.readings = 0
        self.commands: list[str] = []  # every command received, for tests
        self.attached = False  # the cell is wired to the terminals when the first client talks to us
        self._rng = None
        if noise > 0:
            import numpy as np

            self._rng = np.random.default_rng(seed)
        self.noise = noise
        self.reset()

    # ---- state ----------------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.func = "VOLT"
            self.level = {"CURR": 0.0, "VOLT": 0.0}
            self.vlim = 21.0
            self.ilim = 1.05e-4
            self.output = False
            self.smod = {"CURR": "NORM", "VOLT": "NORM"}
            self.sense = "CURR"
            self.nplc = {"VOLT": 1.0, "CURR": 1.0}
            self.errors: deque[tuple[int, str]] = deque(maxlen=32)
            self.clamped = False
            self.v = self.cell.plant.advance_open(0.0) if hasattr(self.cell.plant, "advance_open") else 0.0
            self.i = 0.0
            self.t0 = self.clock.now()
            self._frozen: tuple[float, float, float] | None = None
            self.delay = {"CURR": 0.0, "VOLT": 0.0}  # s, source change to measurement
            self.delay_auto = {"CURR": True, "VOLT": True}  # auto: AUTO_DELAY
            self._changed = False  # the source level changed since the last reading

    def _advance(self, until: float | None = None) -> None:
        """Run the cell under the present source up to `until` (default now)."""
        plant = self.cell.plant
        for dt in self.cell.steps(until):
            t = self.cell.t
            if self.faults.active("compliance", t - self.t0):
                plant.advance_open(dt)  # the cell is no longer connected
                if self.output and self.func == "CURR":
                    self.v, self.i, self.clamped = math.copysign(self.vlim, self.level["CURR"] or 1.0), 0.0, True
                elif self.output:
                    self.v, self.i, self.clamped = self.level["VOLT"], 0.0, False
                continue
            if not self.output:
                if self.smod[self.func] == "HIMP" or not self.attached:
                    self.v, self.i = plant.advance_open(dt), 0.0
                else:  # NORMAL/ZERO: a 0 V source limited to 10 % of its 100 uA range pulls the cell down
                    self.i = -math.copysign(1e-5, self.v) if abs(self.v) > 1e-4 else 0.0
                    self.v = plant.advance_current(self.i, dt)
                self.clamped = False
                continue
            if self.func == "CURR":
                target = self.level["CURR"]
                if self.clamped:
                    vclamp = math.copysign(self.vlim, self.v)
                    i = plant.advance_voltage(vclamp, dt)
                    if abs(i) >= abs(target) or i * target < 0:
                        self.clamped = False
                    self.v, self.i = vclamp, i
                else:
                    v = plant.advance_current(target, dt)
                    if abs(v) > self.vlim:
                        self.clamped = True
                        v = math.copysign(self.vlim, v)
                    self.v, self.i = v, target
            else:
                target = self.level["VOLT"]
                if self.clamped:
                    ilim = math.copysign(self.ilim, self.i)
                    v = plant.advance_current(ilim, dt)
                    if (ilim > 0 and v >= target) or (ilim < 0 and v <= target):
                        self.clamped = False
                        v = target
                    self.v, self.i = v, ilim
                else:
                    i = plant.advance_voltage(target, dt)
                    if abs(i) > self.ilim:
                        self.clamped = True
                        i = math.copysign(self.ilim, i)
                    self.v, self.i = target, i

    # ---- transport ------------------------------------------------------------------------------

    def on_line(self, line: str, link: Link) -> None:
        for command in (c.strip() for c in line.split(";")):
            if not command:
                continue
            with self._lock:
                if not self.attached:
                    self._advance()
                    self.attached = True
                self.commands.append(command)
                reply = self._command(command, link)
            if reply is not None and not link.closed:
                link.write((reply + "\n").encode("ascii"))

    def _command(self, command: str, link: Link) -> str | None:
        header, _, arg = command.partition(" ")
        query = header.endswith("?")
        key = normalise(header.rstrip("?"))
        try:
            self._advance()
            if header.upper().startswith(":READ?") or header.upper() == "READ?":
                return self._read(link)
            return self._dispatch(key, query, arg.strip())
        except ScpiError as exc:
            self.errors.append((exc.code, exc.text))
            return None

    def _read(self, link: Link) -> str | None:
        self.readings += 1
        fault = self.faults.on_reading(self.readings)
        if fault == "disconnect":
            link.drop()
            return None
        if not self.output:
            raise ScpiError(-5074, "Output must be on to make a measurement")
        aperture = self.nplc[self.sense] / 50.0
        if self._changed:  # the source delay after a level change, before the aperture opens
            delay = AUTO_DELAY if self.delay_auto[self.func] else self.delay[self.func]
            self._changed = False
            if delay > 0 and not block_until(self.clock, self.cell.t + delay, self.stop):
                return None
            self._advance()
        t_a = self.cell.t
        if not block_until(self.clock, t_a + aperture, self.stop):
            return None
        v_sum, i_sum = self._integrate(t_a, aperture)
        rel = self.cell.t - self.t0  # the end of the aperture
        if self.faults.active("stuck", rel):
            if self._frozen is None:
                self._frozen = self._values(rel, v_sum, i_sum)
            values = self._frozen
        else:
            values = self._values(rel, v_sum, i_sum)
        if fault == "timeout":
            return None
        if fault == "garble":
            return "#\x7f?9.1E+0\x15,,"
        return ",".join(f"{x:.9E}" for x in values)

    def _integrate(self, t_a: float, aperture: float) -> tuple[float, float]:
        """Voltage and current averaged over the aperture [t_a, t_a + aperture] (an integrating ADC:
        the source readback and the measurement over the same interval). The current is the charge
        the cell model passed over the aperture divided by it (its own bookkeeping, exact however
        sharp the spike after a level change); the voltage is the trapezoid rule on APERTURE_PIECES
        pieces, from its value under the present source at t_a."""
        v0, i0 = self._instant()
        q0 = self._charge()
        v_sum = i_sum = 0.0
        for k in range(1, APERTURE_PIECES + 1):
            self._advance(t_a + aperture * k / APERTURE_PIECES)
            v_sum += 0.5 * (v0 + self.v)
            i_sum += 0.5 * (i0 + self.i)
            v0, i0 = self.v, self.i
        i_mean = i_sum / APERTURE_PIECES if q0 is None else (self._charge() - q0) / aperture
        return v_sum / APERTURE_PIECES, i_mean

    def _instant(self) -> tuple[float, float]:
        """(V, I) at this instant under the present source (after a level change: its jump)."""
        plant = self.cell.plant
        if not self.output or self.clamped or self.faults.active("compliance", self.cell.t - self.t0):
            return self.v, self.i
        if self.func == "CURR":
            return plant.advance_current(self.level["CURR"], 0.0), self.level["CURR"]
        return self.level["VOLT"], plant.advance_voltage(self.level["VOLT"], 0.0)

    def _charge(self) -> float | None:
        """The charge (C) the cell model has passed, if it keeps that account."""
        model = getattr(self.cell.plant, "model", None)
        st = getattr(model, "st", None)
        return None if st is None else float(st[Q_PASSED])

    def _values(self, rel: float, v: float, i: float) -> tuple[float, float, float]:
        if self._rng is not None:
            v += self._rng.normal(0.0, self.noise)
        reading, source = (v, i) if self.sense == "VOLT" else (i, v)
        return reading, source, rel

    def _dispatch(self, key: str, query: bool, arg: str) -> str | None:
        if key == "*IDN":
            speed = "max" if math.isinf(self.clock.speed) else f"{self.clock.speed:g}"
            return f"KEITHLEY INSTRUMENTS,MODEL 2450,{self.serial},1.7.12b cyclerctl-sim speed={speed}"
        if key == "*LANG":
            return "SCPI"
        if key == "*RST":
            self.reset()
            return None
        if key == "*CLS":
            self.errors.clear()
            return None
        if key == "*OPC":
            return "1"
        if key == "SYST:ERR":
            if self.errors:
                code, text = self.errors.popleft()
                return f'{code},"{text}"'
            return '0,"No error"'
        m = re.fullmatch(r"SOUR:FUNC(?::MODE)?", key)
        if m:
            if query:
                return self.func
            f = arg.strip('"').upper()
            f = {"CURRENT": "CURR", "VOLTAGE": "VOLT"}.get(f, f)
            if f not in ("CURR", "VOLT"):
                raise ScpiError(-224, "Illegal parameter value")
            if f != self.func:
                self.func, self.clamped = f, False
            return None
        m = re.fullmatch(r"SOUR:(CURR|VOLT)", key)
        if m:
            f = m.group(1)
            if query:
                return f"{self.level[f]:.6E}"
            value = self._number(arg, 1.05 if f == "CURR" else 210.0)
            self.level[f] = value
            self.clamped = False
            self._changed = self._changed or f == self.func
            return None
        if key in ("SOUR:CURR:VLIM", "SOUR:VOLT:ILIM"):
            if query:
                return f"{(self.vlim if 'VLIM' in key else self.ilim):.6E}"
            if "VLIM" in key:
                self.vlim = self._number(arg, 210.0, 0.02)
            else:
                self.ilim = self._number(arg, 1.05, 1e-9)
            return None
        m = re.fullmatch(r"SOUR:(CURR|VOLT):DEL(:AUTO)?", key)
        if m:
            if m.group(2):
                if query:
                    return "1" if self.delay_auto[m.group(1)] else "0"
                self.delay_auto[m.group(1)] = _bool(arg)
            else:
                if query:
                    return f"{self.delay[m.group(1)]:.6E}"
                self.delay[m.group(1)] = self._number(arg, 1e4, 0.0)
                self.delay_auto[m.group(1)] = False
            return None
        if key in ("SOUR:CURR:VLIM:TRIP", "SOUR:VOLT:ILIM:TRIP"):
            if not query:
                raise ScpiError(-113, "Undefined header")
            mine = ("VLIM" in key) == (self.func == "CURR")
            return "1" if (mine and self.clamped and self.output) else "0"
        if re.fullmatch(r"SOUR:(CURR|VOLT):(RANG:AUTO|READ:BACK)", key) or re.fullmatch(
                r"SENS:(CURR|VOLT):(RANG:AUTO|RSEN)", key):
            if query:
                return "1"
            _bool(arg)
            return None
        if key == "SENS:FUNC":
            if query:
                return f'"{self.sense}:DC"'
            f = arg.strip('"').upper().split(":")[0]
            f = {"CURRENT": "CURR", "VOLTAGE": "VOLT"}.get(f, f)
            if f not in ("CURR", "VOLT"):
                raise ScpiError(-224, "Illegal parameter value")
            self.sense = f
            return None
        m = re.fullmatch(r"SENS:(CURR|VOLT):NPLC", key)
        if m:
            if query:
                return f"{self.nplc[m.group(1)]:g}"
            self.nplc[m.group(1)] = self._number(arg, 10.0, 0.01)
            return None
        m = re.fullmatch(r"OUTP:(CURR|VOLT):SMOD", key)
        if m:
            if query:
                return self.smod[m.group(1)]
            mode = _OFF_MODES.get(arg.upper())
            if mode is None:
                raise ScpiError(-224, "Illegal parameter value")
            self.smod[m.group(1)] = mode
            return None
        if key in ("OUTP", "OUTP:STAT"):
            if query:
                return "1" if self.output else "0"
            on = _bool(arg)
            if on != self.output:
                self.output, self.clamped = on, False
            return None
        raise ScpiError(-113, "Undefined header")

    @staticmethod
    def _number(arg: str, hi: float, lo: float | None = None) -> float:
        if not arg:
            raise ScpiError(-109, "Missing parameter")
        try:
            value = float(arg)
        except ValueError as exc:
            raise ScpiError(-104, "Data type error") from exc
        lo = -hi if lo is None else lo
        if not (lo <= value <= hi) or not math.isfinite(value):
            raise ScpiError(-222, "Parameter data out of range")
        return value
