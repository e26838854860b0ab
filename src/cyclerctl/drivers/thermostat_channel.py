"""A channel with a chamber: runs SetTemperature steps itself and delegates every other step.

While the chamber settles, the cell rests (open circuit) on the channel and is recorded; the chamber
temperature is polled every `poll_period` s and added to the samples. The step completes once the
temperature has stayed within +/- tolerance of the setpoint for `stable_for` s; not settling within
`timeout` is a fault (safe state, one-line InstrumentError)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np

from ..channel import Block, Capabilities, Channel, StepStart, Thermostat, empty_block
from ..errors import InstrumentError
from ..program import End, Rest, SetTemperature, Step


class ThermostatChannel:
    def __init__(self, channel: Channel, thermostat: Thermostat, poll_period: float = 30.0) -> None:
        self.channel = channel
        self.thermostat = thermostat
        self.poll_period = poll_period
        self.name = channel.name
        self.clock = channel.clock
        self.temperature: float | None = None

    @property
    def capabilities(self) -> Capabilities:
        caps = self.channel.capabilities
        t_range = getattr(getattr(self.thermostat, "capabilities", None), "temperature_range", None)
        return replace(caps, techniques=caps.techniques | {"temperature"},
                       temperature_range=t_range or caps.temperature_range)

    async def open(self) -> None:
        await self.channel.open()
        if hasattr(self.thermostat, "open"):
            await self.thermostat.open()

    def run_step(self, step: Step, start: StepStart) -> AsyncIterator[Block]:
        if isinstance(step, SetTemperature):
            return self._settle(step, start)
        return self.channel.run_step(step, start)

    async def _settle(self, step: SetTemperature, start: StepStart) -> AsyncIterator[Block]:
        try:
            await self.thermostat.set_temperature(step.temperature)
        except InstrumentError:
            await self.safe_state()
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
            try:
                self.temperature = await self.thermostat.read_temperature()
            except InstrumentError:
                await self.safe_state()
                raise
            if last is not None:
                self._stamp(last)
            if abs(self.temperature - step.temperature) <= step.tolerance:
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
            if step_time - start.step_time >= step.timeout:
                await self.safe_state()
                raise InstrumentError(
                    f"the chamber did not settle within ±{step.tolerance:g} K of {step.temperature - 273.15:.1f} degC "
                    f"in {step.timeout:g} s (now {self.temperature - 273.15:.2f} degC)", self.thermostat.name)
            if last is not None:
                yield last

    def _stamp(self, block: Block) -> None:
        if self.temperature is not None:
            block.columns["temperature_t1_celsius"] = np.full(len(block), self.temperature - 273.15)

    async def safe_state(self) -> None:
        await self.channel.safe_state()
        await self.thermostat.safe_state()

    async def close(self) -> None:
        """The channel's close (safe state, release), then the chamber to its safe state and released."""
        await self.channel.close()
        await self.thermostat.safe_state()
        await self.thermostat.close()

    def save_state(self) -> bytes | None:
        return self.channel.save_state()

    def load_state(self, state: bytes) -> None:
        self.channel.load_state(state)

