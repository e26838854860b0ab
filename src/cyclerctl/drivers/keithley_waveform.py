"""EIS from the sampled waveform on a Keithley 2450: a host-stepped staircase sine, each stair integrated.

Per frequency f the source steps through N = samples_per_period stairs per period, stair k holding
bias + √2·amplitude·sin(2π(k + ½)/N) for T = 1/(f·N) (the sine's value at the stair's middle, so the
staircase's fundamental is in phase with the sine, scaled by sinc(π/N)); one settling period, then
`periods` periods. Potentiostatic: a voltage source around the bias (at OCV, around the open-circuit
voltage read at 0 A just before); galvanostatic: a current source around the DC bias (0 A at OCV).

Each stair is integrated, not sampled: readings follow one another from the level change (sent in
the same message as the first reading, the source delay off: the aperture opens as the level
changes, where the current's spike is) to the stair's end, their apertures (NPLC, at most 10 PLC
each) filling the stair but for the readings' own overhead, and the stair's sample is the mean of
the measured value and of the source readback of those readings, at the mean of their instrument
timestamps. Why: the cell is driven by the staircase, whose harmonics at (mN ± 1)·f a point sample
per stair aliases onto f; with a stair value and one point reading the demodulated Z is off to
first order in 1/N (a phase of order π/N times |Z(f)|/|Z(N·f)|: degrees at N = 64). Averaged over
the stair, voltage and current are boxcar filtered over the same interval and the aliases drop to
second order. V and I of a sample come from the same readings, so any common offset of the
timestamps cancels in Z = V̂/Î. The stairs run in a worker thread on the channel's clock; a host
that falls behind skips a stair it missed (never applied) or starts it late: the samples are what
was applied and measured, at the instrument's times.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import numpy as np

from ..channel import Block, StepStart
from ..errors import InstrumentError
from ..program import Impedance
from .retry import retrying_blocking
from .stepping import BlockBuilder, block_span

if TYPE_CHECKING:
    from .keithley2450 import Keithley2450Channel


PLC = 1.0 / 50.0  # s, one power-line cycle (50 Hz mains)
MAX_NPLC = 10.0
MIN_NPLC = 0.01
FILL = 0.95  # fraction of a stair the level command and its readings are planned to take
COLUMNS = ("test_time_second", "step_time_second", "voltage_volt", "current_ampere", "frequency_hertz")


def stair_plan(stair: float, overhead: float) -> tuple[int, float]:
    """(readings per stair, their NPLC) for a stair of `stair` seconds when a command or a reading
    costs `overhead` seconds beyond its aperture: as few readings as 10 PLC apertures allow, each
    as long as the stair leaves."""
    budget = stair * FILL - overhead  # the level command
    m = max(1, math.ceil(budget / (MAX_NPLC * PLC + overhead) - 1e-9))
    aperture = budget / m - overhead
    return m, min(MAX_NPLC, max(MIN_NPLC, aperture / PLC))


def _stair_values(n: int) -> np.ndarray:
    """The staircase of one period, unit amplitude: the sine at the stairs' middles."""
    return np.sin(2.0 * math.pi * (np.arange(n) + 0.5) / n)


async def waveform_eis(ch: Keithley2450Channel, step: Impedance, start: StepStart) -> AsyncIterator[Block]:
    inst = ch.inst
    clock = ch.clock
    potentiostatic = step.mode == "potentiostatic"
    freqs = step.frequencies()
    done = np.cumsum([(1 + step.periods) / f for f in freqs])
    k0 = int(np.searchsorted(done, start.step_time + 1e-9, side="right"))  # an interrupted frequency restarts
    peak = math.sqrt(2.0) * step.amplitude
    lim = step.limits
    ilim = ch._current_limit(step)
    if potentiostatic:
        if step.bias is None:  # around the open-circuit voltage, read at 0 A just before
            await ch._call(ch._source_current, 0.0, ch._voltage_limit(step))
            center = (await ch._call(inst.read))[0]
        else:
            center = float(step.bias)
        if center - peak < lim.voltage_min or center + peak > lim.voltage_max:
            raise InstrumentError(f"the sine {center:.4g} V ± {peak * 1e3:.3g} mV leaves the safety window "
                                  f"[{lim.voltage_min:.4g} V, {lim.voltage_max:.4g} V]; lower the amplitude",
                                  inst.resource_name)

        def configure() -> None:
            inst.source_voltage = center  # the level before the function: no jump on the cell
            ch._source_voltage(center, ilim)
    else:
        center = 0.0 if step.bias is None else float(step.bias)
        if abs(center) + peak > lim.current_max:
            raise InstrumentError(f"the sine {center:.4g} A ± {peak:.3g} A passes the current limit "
                                  f"{lim.current_max:.4g} A; lower the amplitude", inst.resource_name)

        def configure() -> None:
            inst.source_current = center
            ch._source_current(center, ch._voltage_limit(step))

    function = "voltage" if potentiostatic else "current"
    level_name = f"source_{function}"

    def no_source_delay() -> None:  # the stair's readings integrate from its level change on
        setattr(inst, f"{function}_source_delay_auto", False)
        setattr(inst, f"{function}_source_delay", 0.0)
        inst.check_errors()

    await ch._call(configure)
    await ch._call(no_source_delay)
    builder = BlockBuilder(block_span(start, clock.speed), COLUMNS)
    rows: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()
    stairs = _Staircase(ch, step, function, center, ilim if potentiostatic else None, rows, stop)
    worker = asyncio.ensure_future(asyncio.to_thread(stairs.run, freqs[k0:]))
    poll = min(1.0, builder.span) if math.isfinite(builder.span) else 1.0
    try:
        while True:
            finished = worker.done()
            while not rows.empty():
                rel, rel0, voltage, current, f = rows.get()
                builder.add((start.test_time + rel - rel0, start.step_time + rel - rel0, voltage, current, f))
                if builder.due(start.test_time + rel - rel0):
                    yield builder.take()
            if finished:
                if worker.exception() is not None and len(builder):
                    yield builder.take()  # the stairs measured before the error are data
                worker.result()  # the staircase's error, if it had one
                break
            await clock.sleep(poll)
    finally:
        stop.set()
        if not worker.done():
            with contextlib.suppress(Exception):
                await worker
        ch._mode = None  # the next step configures afresh (and its own NPLC)
    await ch._call(lambda: setattr(inst, level_name, center))
    yield builder.take(final=True)


class _Staircase:
    """The staircase of every frequency, run in a worker thread on the channel's clock (the event loop
    may stall for a journal commit or a compile; the stairs do not), its samples put on `rows` as
    (instrument time, its origin, V, I, f). Transient instrument errors are retried (retry.py)."""

    def __init__(self, ch: Keithley2450Channel, step: Impedance, function: str, center: float,
                 ilim: float | None, rows: queue.SimpleQueue, stop: threading.Event) -> None:
        self.ch, self.step, self.function, self.center, self.ilim = ch, step, function, center, ilim
        self.rows, self.stop = rows, stop
        self.rel0: float | None = None  # instrument time of step time 0 of this run of the step
        self.host0 = ch.clock.now()
        self.last_rel, self.same = -math.inf, 0

    def wait_until(self, t: float) -> None:
        clock = self.ch.clock
        while not self.stop.is_set():
            remaining = t - clock.now()
            if remaining <= 0:
                return
            self.stop.wait(min(remaining / clock.speed, 0.5))
        raise _Stopped

    def call(self, fn):
        ch = self.ch
        return retrying_blocking(fn, lambda d: self.wait_until(ch.clock.now() + d), retries=ch.retries,
                                 recover=ch.inst.reconnect)

    def run(self, freqs: list[float]) -> None:
        with contextlib.suppress(_Stopped):
            overhead = self.ch.reading_overhead
            for f in freqs:
                overhead = self.frequency(f, overhead)

    def frequency(self, f: float, overhead: float) -> float:
        """One frequency's stairs; what a reading cost beyond its aperture there (the next one's plan)."""
        ch, inst, clock, step = self.ch, self.ch.inst, self.ch.clock, self.step
        n = step.samples_per_period
        stair = 1.0 / (f * n)
        m, nplc = stair_plan(stair, overhead)
        aperture = nplc * PLC
        nplc_name = "current_nplc" if self.function == "voltage" else "voltage_nplc"
        self.call(lambda: setattr(inst, nplc_name, nplc))
        levels = self.center + math.sqrt(2.0) * step.amplitude * _stair_values(n)
        gaps: list[float] = []
        t_f = clock.now()
        for k in range((1 + step.periods) * n):
            due = t_f + k * stair
            if clock.now() >= due + stair:  # the host missed this stair: its level was never applied
                continue
            self.wait_until(due)
            level = float(levels[k % n])

            def take(level=level, end=due + stair):
                # the planned readings, each if its aperture closes before the next stair is due (one
                # skipped leaves a hole in the stair's average; one late delays the next stair a little)
                raws = [inst.read((self.function, level))]
                while len(raws) < m and clock.now() + aperture <= end:
                    raws.append(inst.read())
                return raws

            raws = self.call(take)
            for raw in raws:
                self.check_stuck(raw)
            gaps += [b[2] - a[2] - aperture for a, b in zip(raws, raws[1:], strict=False)]
            reading = float(np.mean([r[0] for r in raws]))
            source = float(np.mean([r[1] for r in raws]))
            rel = float(np.mean([r[2] for r in raws]))
            if self.rel0 is None:
                self.rel0 = rel - (clock.now() - self.host0)
            voltage, current = (source, reading) if self.function == "voltage" else (reading, source)
            self.check_limits(voltage, current, level)
            self.rows.put((rel, self.rel0, voltage, current, f))
        return max(ch.reading_overhead, float(np.median(gaps))) if gaps else overhead

    def check_stuck(self, raw: tuple[float, float, float]) -> None:
        if raw[2] <= self.last_rel:
            self.same += 1
            if self.same >= self.ch.stuck_readings:
                raise InstrumentError(f"readings stuck at {raw[0]:.6g}, {raw[1]:.6g} (timestamp not advancing "
                                      f"for {self.same + 1} readings)", self.ch.inst.resource_name,
                                      self.ch.inst.READ)
        else:
            self.same = 0
        self.last_rel = raw[2]

    def check_limits(self, voltage: float, current: float, level: float) -> None:
        """The safety window on every stair, and the source's compliance: a clamped source is not a sine."""
        lim, inst, ilim = self.step.limits, self.ch.inst, self.ilim
        if not lim.voltage_min <= voltage <= lim.voltage_max or abs(current) > lim.current_max:
            raise InstrumentError(f"safety: {voltage:.4g} V, {current:.4g} A outside the window "
                                  f"[{lim.voltage_min:.4g} V, {lim.voltage_max:.4g} V], {lim.current_max:.4g} A",
                                  inst.resource_name)
        if ilim is not None and abs(current) >= 0.999 * ilim:
            if self.call(lambda: inst.current_limit_tripped):
                raise InstrumentError(f"compliance: the current limit {ilim:.3g} A clamps the sine at "
                                      f"{voltage:.4g} V", inst.resource_name, ":SOUR:VOLT:ILIM:TRIP?")
        elif ilim is None and abs(current - level) > 0.01 * abs(level) + 1e-8:
            if self.call(lambda: inst.voltage_limit_tripped):
                raise InstrumentError(
                    f"compliance: the voltage limit clamps the source at {voltage:.4g} V, {current:.4g} A "
                    f"instead of {level:.4g} A (cell disconnected?)", inst.resource_name, ":SOUR:CURR:VLIM:TRIP?")


class _Stopped(Exception):
    """The step was stopped (the consumer went away) while the staircase waited."""
