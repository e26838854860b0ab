"""Host-side step logic shared by instrument drivers: end conditions, the record rule and block building.

An instrument driver turns readings (step time, voltage, current, temperature) into Blocks. This module
decides, reading by reading, whether an end condition of the step holds (`EndWatch`), whether the reading
is recorded (`Recorder`, the step's `Record` rule: first and last reading always) and when a block is due
(`BlockBuilder`). Host-polled instruments detect an end at the first reading past it; they never
interpolate a crossing they did not measure.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from ..channel import Block, StepStart
from ..program import End, Record, Step


class EndWatch:
    """Evaluates a step's end conditions on successive readings.

    Step charge is the trapezoidal integral of the measured current (C), starting from
    `start.step_charge`. |dV/dt| is the slope over the end's trailing `window` (s), or between the
    last two recorded samples when the window is 0; it is never evaluated before a full window exists."""

    def __init__(self, ends: tuple[End, ...], start: StepStart) -> None:
        self.ends = ends
        self.step_charge = start.step_charge
        self._t0 = start.step_time
        self._last: tuple[float, float] | None = None  # (step_time, current)
        self._history: deque[tuple[float, float]] = deque()
        self._window = max((e.window for e in ends if e.quantity == "abs_dv_dt"), default=0.0)
        self._recorded: tuple[float, float] | None = None  # last recorded (t, V) for window 0

    def feed(self, step_time: float, voltage: float, current: float,
             temperature_kelvin: float | None = None) -> int | None:
        """Account for one reading; the index of the first end that holds, else None."""
        if self._last is not None:
            t_prev, i_prev = self._last
            self.step_charge += 0.5 * (current + i_prev) * (step_time - t_prev)
        self._last = (step_time, current)
        if self._window > 0:
            self._history.append((step_time, voltage))
            while len(self._history) > 2 and self._history[1][0] <= step_time - self._window:
                self._history.popleft()
        for k, end in enumerate(self.ends):
            x = self._quantity(end, step_time, voltage, current, temperature_kelvin)
            if x is not None and not math.isnan(x) and end.holds(x):
                return k
        return None

    def recorded(self, step_time: float, voltage: float) -> None:
        """Tell the watch a reading was recorded (the reference of a window-0 |dV/dt|)."""
        self._recorded = (step_time, voltage)

    def _quantity(self, end: End, t: float, v: float, i: float, temp: float | None) -> float | None:
        q = end.quantity
        if q == "step_time":
            return t
        if q == "voltage":
            return v
        if q == "current":
            return i
        if q == "abs_current":
            return abs(i)
        if q == "abs_step_charge":
            return abs(self.step_charge)
        if q == "temperature":
            return temp
        if q == "abs_dv_dt":
            if end.window > 0:
                t_old, v_old = self._history[0]
                if t - t_old < end.window or t <= t_old:
                    return None
                return abs(v - v_old) / (t - t_old)
            if self._recorded is None or t <= self._recorded[0]:
                return None
            return abs(v - self._recorded[1]) / (t - self._recorded[0])
        return None


class Recorder:
    """The step's record rule: a reading is kept when `every` seconds, `voltage_change` or
    `current_change` have passed since the last kept reading; the first one is always kept."""

    def __init__(self, rule: Record) -> None:
        self.rule = rule
        self._last: tuple[float, float, float] | None = None

    def wants(self, step_time: float, voltage: float, current: float) -> bool:
        if self._last is None:
            return True
        t, v, i = self._last
        r = self.rule
        return ((r.every is not None and step_time - t >= r.every - 1e-9)
                or (r.voltage_change is not None and abs(voltage - v) >= r.voltage_change)
                or (r.current_change is not None and abs(current - i) >= r.current_change))

    def kept(self, step_time: float, voltage: float, current: float) -> None:
        self._last = (step_time, voltage, current)


class BlockBuilder:
    """Collects recorded rows and cuts them into Blocks at least every `span` seconds of test time."""

    def __init__(self, span: float, columns: tuple[str, ...]) -> None:
        self.span = span
        self.columns = columns
        self._rows: list[tuple[float, ...]] = []

    def add(self, row: tuple[float, ...]) -> None:
        self._rows.append(row)

    def __len__(self) -> int:
        return len(self._rows)

    def due(self, test_time: float) -> bool:
        return bool(self._rows) and test_time - self._rows[0][0] >= self.span

    def take(self, end: int | None = None, final: bool = False) -> Block:
        data = np.array(self._rows, dtype=np.float64).reshape(len(self._rows), len(self.columns))
        self._rows = []
        return Block({c: data[:, k].copy() for k, c in enumerate(self.columns)}, end=end, final=final)


def block_span(start: StepStart, speed: float, wall_seconds: float = 1.0) -> float:
    """Test-time span of one block: `wall_seconds` of wall time at the clock's speed, never more
    than the engine's max_block_span."""
    per_wall = wall_seconds * (speed if math.isfinite(speed) else math.inf)
    return min(start.max_block_span, per_wall)


def step_duration(step: Step) -> float | None:
    """The smallest step_time end of a step (s), if it has one."""
    times = [e.value for e in step.ends if e.quantity == "step_time" and e.op == ">="]
    return min(times) if times else None
