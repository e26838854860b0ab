"""Safety limits checked on every sample block, with a short debounce against noise.

A limit trips when 2 consecutive samples are outside it (a single noisy sample does not), or at once
when one sample is outside by more than a large margin: 50 mV for voltage, 10 % of the limit for
current, 2 K for temperature. Consecutive samples may straddle two blocks, so the count of trailing
violations carries over. Step duration trips at once. One compiled pass per limit and block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from ..program import Limits

VOLTAGE_MARGIN = 0.050  # V
CURRENT_MARGIN = 0.10  # fraction of the limit
TEMPERATURE_MARGIN = 2.0  # K
DEBOUNCE = 2  # consecutive samples
KELVIN = 273.15


@dataclass(frozen=True, slots=True)
class Trip:
    """Which limit, the offending value (SI), the limit, and the sample index within the block."""

    limit: str
    value: float
    bound: float
    index: int

    @property
    def message(self) -> str:
        unit = {"voltage": "V", "current": "A", "temperature": "K", "step": "s"}[self.limit.split("_")[0]]
        return f"safety limit {self.limit} = {self.bound:.6g} {unit} crossed: {self.value:.6g} {unit}"


class SafetyMonitor:
    """Debounced limit checks for one channel. `trailing` holds, per limit, how many samples at the
    end of the previous block were outside it."""

    def __init__(self) -> None:
        self.trailing: dict[str, int] = {}
        self._plan: tuple = ()  # _check_one's limits of the step, built once per Limits
        self._plan_for: Limits | None = None

    def reset(self) -> None:
        self.trailing.clear()

    def check(self, limits: Limits, columns: dict[str, np.ndarray], step_time: np.ndarray | None) -> Trip | None:
        """The first trip in the block (by sample index), or None."""
        v = columns.get("voltage_volt")
        if v is not None and len(v) == 1 and "real_impedance_ohm" not in columns:
            return self._check_one(limits, columns, step_time)
        trips: list[Trip] = []
        i = columns.get("current_ampere")
        t = columns.get("temperature_t1_celsius")
        # impedance rows (an instrument's spectrum: one row per frequency) carry no instantaneous V or I to
        # hold to the limits; a sampled waveform does, and is checked like any other block
        eis = "real_impedance_ohm" in columns and np.isfinite(columns["real_impedance_ohm"]).any()
        if v is not None and not eis:
            self._side(trips, "voltage_min", v, limits.voltage_min, -1, VOLTAGE_MARGIN)
            self._side(trips, "voltage_max", v, limits.voltage_max, +1, VOLTAGE_MARGIN)
        if i is not None and not eis and math.isfinite(limits.current_max):
            self._side(trips, "current_max", i, limits.current_max, +1, CURRENT_MARGIN * limits.current_max,
                       absolute=True)
        if t is not None:
            self._side(trips, "temperature_min", t, limits.temperature_min, -1, TEMPERATURE_MARGIN, offset=KELVIN)
            self._side(trips, "temperature_max", t, limits.temperature_max, +1, TEMPERATURE_MARGIN, offset=KELVIN)
        if step_time is not None and len(step_time) and math.isfinite(limits.step_duration_max):
            over = np.flatnonzero(step_time > limits.step_duration_max)
            if len(over):
                k = int(over[0])
                trips.append(Trip("step_duration_max", float(step_time[k]), limits.step_duration_max, k))
        return min(trips, key=lambda tr: tr.index) if trips else None

    def _check_one(self, limits: Limits, columns: dict[str, np.ndarray], step_time: np.ndarray | None
                   ) -> Trip | None:
        """check() for a block of one sample (real-time acquisition), on Python floats: the same
        rules as the vectorized path, in the same order (all candidate trips have index 0)."""
        plan = self._plan if self._plan_for is limits else self._make_plan(limits)
        trailing = self.trailing
        trip = None
        values: dict[str, float] = {}
        for name, column, sign, bound, margin in plan:
            x = values.get(column)
            if x is None:
                a = columns.get(column)
                if a is None:
                    continue
                x = float(a[0])
                x = abs(x) if column == "current_ampere" else x + KELVIN if column == "temperature_t1_celsius" else x
                values[column] = x
            excess = (x - bound) * sign
            if not excess > 0:  # inside, or NaN
                trailing[name] = 0
                continue
            prev = trailing.get(name, 0)
            trailing[name] = prev + 1
            if trip is None and (excess > margin or prev >= 1):
                trip = Trip(name, x, bound, 0)
        if trip is None and step_time is not None and len(step_time) and math.isfinite(limits.step_duration_max):
            st = float(step_time[0])
            if st > limits.step_duration_max:
                trip = Trip("step_duration_max", st, limits.step_duration_max, 0)
        return trip

    def _make_plan(self, limits: Limits) -> tuple:
        """The finite limits of a step in check order: (name, column, sign, bound, margin)."""
        plan = [("voltage_min", "voltage_volt", -1, limits.voltage_min, VOLTAGE_MARGIN),
                ("voltage_max", "voltage_volt", +1, limits.voltage_max, VOLTAGE_MARGIN),
                ("current_max", "current_ampere", +1, limits.current_max, CURRENT_MARGIN * limits.current_max),
                ("temperature_min", "temperature_t1_celsius", -1, limits.temperature_min, TEMPERATURE_MARGIN),
                ("temperature_max", "temperature_t1_celsius", +1, limits.temperature_max, TEMPERATURE_MARGIN)]
        self._plan = tuple(p for p in plan if math.isfinite(p[3]))
        self._plan_for = limits
        return self._plan

    def _side(self, trips: list[Trip], name: str, x: np.ndarray, bound: float, sign: int, margin: float,
              absolute: bool = False, offset: float = 0.0) -> None:
        """The limit `bound` on x (|x| if `absolute`, x + `offset`) over one block."""
        if not math.isfinite(bound) or len(x) == 0:
            return
        first, run = _scan(x, bound, float(sign), margin, self.trailing.get(name, 0), absolute, offset)
        self.trailing[name] = run
        if first >= 0:
            value = float(x[first])
            trips.append(Trip(name, (abs(value) if absolute else value + offset), bound, first))


@njit(cache=True, nogil=True)
def _scan(x, bound, sign, margin, prev, absolute, offset):  # pragma: no cover - compiled
    """One pass over a block for one limit: a sample is out when (x − bound)·sign > 0 (NaN is not),
    hard when that excess is above `margin`. Returns the index of the first sample that trips (the
    first hard one, the first completing DEBOUNCE = 2 consecutive outs, or 0 when the previous
    block ended outside (`prev` ≥ 1) and this one starts outside), or -1; and the run of outs at
    the block's end (plus `prev` when the whole block is out) for the next block."""
    n = x.shape[0]
    first = -1
    run = 0
    before = prev >= 1
    for k in range(n):
        xk = abs(x[k]) if absolute else x[k] + offset
        excess = (xk - bound) * sign
        out = excess > 0.0
        if out:
            if first < 0 and (excess > margin or before):
                first = k
            run += 1
        else:
            run = 0
        before = out
    if run == n and n > 0:
        run += prev
    return first, run
