"""A channel with a chamber: runs SetTemperature steps itself and delegates every other step.

While the chamber settles, the cell rests (open circuit) on the channel and is recorded; the chamber
temperature is polled every `poll_period` s and added to the samples. The step completes once the
temperature has stayed within +/- tolerance of the setpoint for `stable_for` s; not settling within
`timeout` is a fault (safe state, one-line InstrumentError).

During every other step the chamber is read in the background every `poll_period` s (the channel's
own step is never held up by the chamber's link); blocks without a temperature of their own carry
the latest reading. A channel that models its cell (the simulator: `set_ambient`) is told each
reading, so the simulated cell follows the real chamber with its own thermal lag.

Several channels may share one chamber (`SharedThermostat`): it is opened once, every exchange with
it holds one lock, and it goes to its safe state when it fails or when the last channel using it is
closed. A channel alone on its chamber also puts the chamber in its safe state with its own (pause,
stop, fault); the next step after that (a resumed channel) gives the chamber its last set point again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np

from ..channel import Block, Capabilities, Channel, StepStart, Thermostat, empty_block
from ..errors import InstrumentError
from ..program import End, Rest, SetTemperature, Step

log = logging.getLogger(__name__)


class SharedThermostat:
    """One chamber (a Thermostat) used by one or more channels: opened once, one lock around every
    exchange, released (safe state, transport closed) when the last user closes."""

    def __init__(self, thermostat: Thermostat) -> None:
        self.thermostat = thermostat
        self.name = getattr(thermostat, "name", "chamber")
        self.capabilities = getattr(thermostat, "capabilities", None)
        self.lock = asyncio.Lock()
        self.users = 0
        self._opened = False
        self._closed = False
        self._safe = False  # in its safe state since the last set point (asked once, not per caller)
        self.setpoint: float | None = None  # K, the last set point given
        self._pending = False  # a resumed run's set point, not yet given to this chamber

    def attach(self) -> SharedThermostat:
        self.users += 1
        return self

    async def open(self) -> None:
        async with self.lock:
            if not self._opened:
                if hasattr(self.thermostat, "open"):
                    await self.thermostat.open()
                self._opened = True
                self._closed = False

    async def set_temperature(self, kelvin: float) -> None:
        async with self.lock:
            self._safe = self._pending = False
            self.setpoint = kelvin
            await self.thermostat.set_temperature(kelvin)

    def resume_at(self, kelvin: float | None) -> None:
        """A resumed run: the chamber's set point before the interruption, given again by `restore`."""
        if kelvin is not None:
            self.setpoint = float(kelvin)
            self._pending = True

    async def restore(self) -> None:
        """Back to the last set point after a safe state (a paused channel resumed) or in a resumed run."""
        if (self._safe or self._pending) and self.setpoint is not None and not self._closed:
            await self.set_temperature(self.setpoint)

    async def read_temperature(self) -> float:
        async with self.lock:
            return await self.thermostat.read_temperature()

    async def safe_state(self) -> None:
        """The chamber's safe state (standby, output off), once until the next set point: a failing
        chamber is not asked again by every caller (each attempt may take its full retries)."""
        async with self.lock:
            if not self._safe:
                self._safe = True
                await self.thermostat.safe_state()

    async def release(self) -> None:
        """One user is done; the last one puts the chamber in its safe state and closes the link."""
        self.users = max(0, self.users - 1)
        if self.users == 0 and not self._closed:
            self._closed = True
            self._opened = False
            await self.safe_state()
            async with self.lock:
                await self.thermostat.close()

    async def close(self) -> None:
        await self.release()


class ThermostatChannel:
    def __init__(self, channel: Channel, thermostat: Thermostat | SharedThermostat, poll_period: float = 30.0) -> None:
        self.channel = channel
        shared = thermostat if isinstance(thermostat, SharedThermostat) else SharedThermostat(thermostat)
        self.thermostat = shared.attach()
        self.poll_period = poll_period
        self.name = channel.name
        self.clock = channel.clock
        self.temperature: float | None = None  # K, the latest chamber reading
        self._read_at = -float("inf")  # clock time of the latest reading (or of the read in flight)
        self._reading: asyncio.Task | None = None

    @property
    def capabilities(self) -> Capabilities:
        caps = self.channel.capabilities
        t_range = getattr(self.thermostat.capabilities, "temperature_range", None)
        real = bool(caps.real_hardware or getattr(self.thermostat.capabilities, "real_hardware", False))
        return replace(caps, techniques=caps.techniques | {"temperature"},
                       temperature_range=t_range or caps.temperature_range, real_hardware=real)

    async def open(self) -> None:
        await self.channel.open()
        try:
            await self.thermostat.open()
        except BaseException:
            await self.channel.close()
            raise

    def run_step(self, step: Step, start: StepStart) -> AsyncIterator[Block]:
        if isinstance(step, SetTemperature):
            return self._settle(step, start)
        return self._delegate(step, start)

    # ---- readings -----------------------------------------------------------------------------

    def _took(self, kelvin: float) -> None:
        self.temperature = kelvin
        set_ambient = getattr(self.channel, "set_ambient", None)
        if set_ambient is not None:
            set_ambient(kelvin)

    async def _read(self) -> float:
        """Read the chamber now (inline); a failure puts the channel and the chamber in their safe state."""
        self._read_at = self.clock.now()
        try:
            kelvin = await self.thermostat.read_temperature()
        except InstrumentError:
            await self._chamber_failed()
            raise
        self._took(kelvin)
        return kelvin

    async def _poll_in_background(self) -> None:
        """Start a reading when the last is older than poll_period; collect one that finished."""
        task = self._reading
        if task is not None and task.done():
            self._reading = None
            exc = task.exception()
            if exc is not None:
                await self._chamber_failed()
                raise exc
            self._took(task.result())
        if self._reading is None and self.clock.now() - self._read_at >= self.poll_period:
            self._read_at = self.clock.now()
            self._reading = asyncio.create_task(self.thermostat.read_temperature(), name=f"chamber:{self.name}")

    async def _cancel_reading(self) -> None:
        task, self._reading = self._reading, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, InstrumentError):
                await task

    async def _chamber_failed(self) -> None:
        await self.channel.safe_state()
        await self.thermostat.safe_state()

    # ---- steps ----------------------------------------------------------------------------------

    async def _delegate(self, step: Step, start: StepStart) -> AsyncIterator[Block]:
        try:
            await self.thermostat.restore()
        except InstrumentError:
            await self._chamber_failed()
            raise
        await self._poll_in_background()
        async for block in self.channel.run_step(step, start):
            await self._poll_in_background()
            if self.temperature is not None and len(block) and "temperature_t1_celsius" not in block.columns:
                self._stamp(block)
            yield block

    async def _settle(self, step: SetTemperature, start: StepStart) -> AsyncIterator[Block]:
        await self._cancel_reading()
        try:
            await self.thermostat.set_temperature(step.temperature)
        except InstrumentError:
            await self._chamber_failed()
            raise
        step_time, test_time, charge = start.step_time, start.test_time, start.step_charge
        stable_since: float | None = None
        seen = self.clock.now()  # clock time of the last sample: the next chunk starts later by the gap
        while True:
            gap = max(0.0, self.clock.now() - seen)
            step_time, test_time = step_time + gap, test_time + gap
            chunk = Rest(step_id=step.step_id, name=step.name, record=step.record, limits=step.limits,
                         ends=(End("step_time", ">=", step_time + self.poll_period),), technique="temperature")
            sub = StepStart(test_time=test_time, step_time=step_time, step_charge=charge,
                            max_block_span=start.max_block_span)
            last: Block | None = None
            async for block in self.channel.run_step(chunk, sub):
                if len(block):
                    test_time = float(block.time[-1])
                    step_time = float(block.columns.get("step_time_second", block.time)[-1])
                    seen = self.clock.now()
                block.final, block.end = False, None
                self._stamp(block)
                if last is not None:
                    yield last
                last = block
            temperature = await self._read()
            if last is not None:
                self._stamp(last)
            if abs(temperature - step.temperature) <= step.tolerance:
                stable_since = step_time if stable_since is None else stable_since
            else:
                stable_since = None
            done = stable_since is not None and step_time - stable_since >= step.stable_for
            if done:
                if last is None:
                    yield empty_block(final=True)
                else:
                    last.final = True
                    yield last
                return
            if step_time >= step.timeout:  # the step's own time (pause excluded), across a resume too
                await self._chamber_failed()
                raise InstrumentError(
                    f"the chamber did not settle within ±{step.tolerance:g} K of {step.temperature - 273.15:.1f} degC "
                    f"in {step.timeout:g} s (now {temperature - 273.15:.2f} degC); check the chamber (door, "
                    f"compressor, set point) or give the step a longer timeout", self.thermostat.name)
            if last is not None:
                yield last

    def _stamp(self, block: Block) -> None:
        if self.temperature is not None:
            block.columns["temperature_t1_celsius"] = np.full(len(block), self.temperature - 273.15)

    # ---- safe state, close, state ---------------------------------------------------------------

    async def safe_state(self) -> None:
        """The channel's safe state; the chamber's too when this channel is its only user (a shared
        chamber keeps its set point for the others until it fails or the last one closes)."""
        await self._cancel_reading()
        await self.channel.safe_state()
        if self.thermostat.users <= 1:
            await self.thermostat.safe_state()

    async def close(self) -> None:
        """The channel's close (safe state, release); the last user of the chamber puts it in its safe
        state and releases it."""
        await self._cancel_reading()
        try:
            await self.channel.close()
        finally:
            await self.thermostat.release()

    def save_state(self) -> bytes | None:
        """The channel's state and the chamber's last set point (journaled with each commit, so a
        resumed run gives the chamber its set point back before the next step)."""
        if self.thermostat.setpoint is None:
            return self.channel.save_state()
        return _STATE_TAG + pickle.dumps({"channel": self.channel.save_state(), "setpoint": self.thermostat.setpoint})

    def load_state(self, state: bytes) -> None:
        if not state.startswith(_STATE_TAG):
            self.channel.load_state(state)
            return
        saved = pickle.loads(state[len(_STATE_TAG):])
        if saved.get("channel") is not None:
            self.channel.load_state(saved["channel"])
        self.thermostat.resume_at(saved.get("setpoint"))


_STATE_TAG = b"cyclerctl-thermostat-channel/1\n"
