"""A small stand-in Channel for engine tests: a linear cell with a series resistance.

Sodiated fraction x in [0, 1]; open-circuit voltage OCV(x) = v_max - span * x (sodiation lowers it);
terminal voltage V = OCV + I R; dx/dt = -I / Q (positive current = charge = desodiation). Constant
current and rest are linear in time, a constant-voltage hold decays exponentially, so every end
condition is located exactly and samples fall on the record grid (step_time = k * every) whatever
the block split: a resumed run reproduces an uninterrupted one.

Fault injection for tests: fail_after (raise InstrumentError after N blocks), hang_after (stop
answering after N blocks), overshoot (ignore voltage ends: the cell runs into the safety limits).
"""

from __future__ import annotations

import json
import math

import numpy as np

from cyclerctl.channel import Block, Capabilities, StepStart, empty_block
from cyclerctl.errors import InstrumentError
from cyclerctl.program import (
    ConstantCurrent,
    ConstantVoltage,
    Impedance,
    Rest,
    SetTemperature,
    Sweep,
)


class RCChannel:
    """A Channel (cyclerctl.channel.Channel) of a linear RC cell."""

    def __init__(self, clock, *, capacity=3.6, resistance=20.0, v_max=1.2, span=1.2, x0=0.0, name="rc",
                 fail_after=None, hang_after=None, overshoot=False, block_samples=None):
        self.name = name
        self.clock = clock
        self.capabilities = Capabilities(model="rc-test")
        self.Q = float(capacity)  # C
        self.R = float(resistance)  # ohm
        self.v_max = v_max
        self.span = span
        self.x = float(x0)
        self.output_on = False
        self.opened = False
        self.closed = False
        self.blocks = 0
        self.fail_after = fail_after
        self.hang_after = hang_after
        self.overshoot = overshoot
        self.block_samples = block_samples
        self.safe_calls = 0
        self.steps_run = []

    # ---- Channel protocol ----------------------------------------------------------------------

    async def open(self):
        self.opened = True
        self.output_on = False

    async def safe_state(self):
        self.safe_calls += 1
        self.output_on = False

    async def close(self):
        self.output_on = False
        self.closed = True

    def save_state(self):
        return json.dumps({"x": self.x, "blocks": self.blocks}).encode()

    def load_state(self, state):
        d = json.loads(state)
        self.x = d["x"]
        self.blocks = d["blocks"]

    def ocv(self, x):
        return self.v_max - self.span * x

    async def run_step(self, step, start: StepStart):
        self.steps_run.append(step.name)
        self.output_on = not isinstance(step, (Rest, SetTemperature))
        c0, t0 = self.clock.now(), start.test_time
        cont = start.step_time > 0
        if isinstance(step, Impedance):
            f = np.array(step.frequencies())
            w = 2 * np.pi * f
            z = self.R + 1.0 / (1.0 / 50.0 + 1j * w * 1e-5)
            n = len(f)
            cols = {"test_time_second": t0 + np.arange(n) * 1.0, "voltage_volt": np.full(n, self.ocv(self.x)),
                    "current_ampere": np.zeros(n), "frequency_hertz": f, "real_impedance_ohm": z.real,
                    "imaginary_impedance_ohm": z.imag, "step_time_second": np.arange(n) * 1.0}
            await self.clock.sleep_until(c0 + n)
            yield Block(cols, end=None, final=True)
            return
        duration, end_index = self._duration(step, start)
        every = step.record.every or 10.0
        k0 = math.floor(start.step_time / every) + 1 if cont else 0
        grid = np.arange(k0, max(k0, math.floor(duration / every + 1e-12)) + 1) * every
        grid = grid[grid <= duration]
        if not len(grid) or grid[-1] < duration:
            grid = np.append(grid, duration)
        if cont:
            grid = grid[grid > start.step_time]
        x_start = self.x
        st0 = start.step_time
        span = start.max_block_span
        per = self.block_samples or (max(1, int(span / every)) if math.isfinite(span) else len(grid) or 1)
        i = 0
        while True:
            chunk = grid[i:i + per]
            i += len(chunk)
            last = i >= len(grid)
            if self.fail_after is not None and self.blocks >= self.fail_after:
                raise InstrumentError("simulated instrument failure", resource=self.name, last_command="READ?")
            if self.hang_after is not None and self.blocks >= self.hang_after:
                import asyncio

                await asyncio.Event().wait()
            v, cur, x_end = self._profile(step, chunk - st0, x_start)
            t = t0 + (chunk - st0)
            if len(chunk):
                await self.clock.sleep_until(c0 + (chunk[-1] - st0))
                self.x = float(x_end[-1])
            self.blocks += 1
            cols = {"test_time_second": t, "voltage_volt": v, "current_ampere": cur, "step_time_second": chunk}
            if len(chunk) and isinstance(step, Sweep):
                cols["sweep_segment"] = np.zeros(len(chunk))
            yield Block(cols, end=end_index if last else None, final=last) if len(chunk) else empty_block(
                final=True, end=end_index)
            if last:
                return

    # ---- the model -----------------------------------------------------------------------------

    def _profile(self, step, dt, x0):
        """Voltage, current, sodiated fraction at times dt after the segment start (state x0)."""
        n = len(dt)
        if isinstance(step, ConstantCurrent):
            i = np.full(n, step.current)
            x = x0 - step.current * dt / self.Q
            return self.ocv(x) + i * self.R, i, x
        if isinstance(step, ConstantVoltage):
            u0 = step.voltage - self.ocv(x0)
            tau = self.R * self.Q / self.span
            u = u0 * np.exp(-dt / tau)
            i = u / self.R
            x = x0 - (u0 - u) / self.span
            return np.full(n, step.voltage), i, x
        if isinstance(step, Sweep):
            v = np.clip(step.start + step.scan_rate * dt, -5, 5)
            i = (v - self.ocv(x0)) / self.R * 1e-3
            return v, i, np.full(n, x0)
        v = np.full(n, self.ocv(x0))
        return v, np.zeros(n), np.full(n, x0)

    def _duration(self, step, start):
        """Total step time (s) at which the step ends, and the index of the end that fires."""
        best, which = math.inf, None
        if isinstance(step, Sweep):
            best = step.duration
        if isinstance(step, SetTemperature):
            best = step.stable_for
        for k, e in enumerate(step.ends):
            t = self._end_time(step, e, start)
            if t is not None and t < best:
                best, which = t, k
        if not math.isfinite(best):
            best = 3600.0 * 24
        return max(best, start.step_time), which

    def _end_time(self, step, e, start):
        s0 = start.step_time
        if e.quantity == "step_time":
            return e.value
        if isinstance(step, ConstantCurrent):
            i = step.current
            if e.quantity == "voltage" and not self.overshoot:
                v_now = self.ocv(self.x) + i * self.R
                rate = self.span * i / self.Q  # dV/dt
                if e.holds(v_now):
                    return s0
                if rate == 0 or (e.op == "<=" and rate > 0) or (e.op == ">=" and rate < 0):
                    return None
                return s0 + (e.value - v_now) / rate
            if e.quantity == "abs_step_charge":
                return s0 + max(0.0, e.value - abs(start.step_charge)) / abs(i) if i else None
        if isinstance(step, ConstantVoltage) and e.quantity == "abs_current":
            u0 = step.voltage - self.ocv(self.x)
            tau = self.R * self.Q / self.span
            if abs(u0) / self.R <= e.value:
                return s0
            return s0 + tau * math.log(abs(u0) / (self.R * e.value))
        if isinstance(step, Rest) and e.quantity == "abs_dv_dt":
            return s0
        return None


def rc_factory(spec, clock, cell, **options):
    """Registry factory for "rc:NAME" instruments (tests only)."""
    options.pop("seed", None)
    options.pop("noise", None)
    return RCChannel(clock, **options)
