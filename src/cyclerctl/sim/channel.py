"""SimChannel: the simulated cycler channel (a cyclerctl.channel.Channel) on the cell model.

It runs every primitive step of a Program on the model, whole blocks at a time, with instrument
noise and ADC resolution (switchable off), and paces itself on the clock: with a VirtualClock a
step is computed as fast as the CPU allows; with a WallClock at speed N blocks come out in (scaled)
real time. SetTemperature drives the built-in chamber (ramp + the cell's thermal lag), so a
variable-temperature EIS series runs on a SimChannel alone.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np

from ..channel import Block, Capabilities, StepStart
from ..clock import Clock, VirtualClock
from ..program import Cell, Step
from .model import CellModel
from .preset import Preset
from .steps import KELVIN, run_step


class SimChannel:
    """A simulated cell on a simulated cycler channel.

    noise: add measurement noise and ADC quantisation (preset `noise:`) to V, I, T and Z.
    truth: attach the model's ground truth to every Block (Block.truth).
    options: max_block_samples (default 100 000) bounds the samples of one block."""

    def __init__(self, preset: Preset | str = "hard_carbon", clock: Clock | None = None, cell: Cell | None = None,
                 noise: bool = True, seed: int = 0, name: str = "sim", truth: bool = False,
                 temperature: float = 298.15, **options: Any) -> None:
        self.model = CellModel(preset, cell, temperature)
        self.preset = self.model.preset
        self.cell = self.model.cell
        self.clock = clock if clock is not None else VirtualClock()
        self.noise = bool(noise)
        self.truth = bool(truth)
        self.name = name
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.max_block_samples = int(options.pop("max_block_samples", 100_000))
        self._live: dict = {}  # the running step's state (saved with the model)
        self._resume: np.ndarray | None = None
        self.options = options
        self.capabilities = Capabilities(
            model=f"sim:{self.preset.name}",
            techniques=frozenset({"rest", "current", "voltage", "sweep", "impedance", "impedance_waveform",
                                  "temperature"}),
            voltage_range=(-2.0, 6.0), current_max=1.0, current_resolution=self.preset.current_resolution,
            voltage_resolution=self.preset.voltage_resolution, scan_rate_range=(1e-7, 10.0),
            frequency_range=(1e-5, 1e6), min_sample_period=0.0, temperature_range=(213.15, 373.15),
            real_hardware=False,
        )

    async def open(self) -> None:
        """Nothing to connect; the cell is at open circuit."""

    def set_ambient(self, kelvin: float) -> None:
        """The air around the cell is at `kelvin` (a chamber the engine drives, read by
        ThermostatChannel); the cell follows with its thermal time constant."""
        if not 150.0 < kelvin < 500.0:
            raise ValueError(f"ambient temperature {kelvin!r} K is out of range")
        self.model.set_chamber(float(kelvin), immediate=True)

    async def safe_state(self) -> None:
        """Open circuit. The cell rests from now on until the next step starts."""

    async def close(self) -> None:
        await self.safe_state()

    # ---- steps ----------------------------------------------------------------------------------

    def _spans(self, start: StepStart) -> tuple[float, float]:
        """(test time per block handed over, test time computed at once). On a wall clock the model
        is advanced about half a second of wall time at a time, and what that computed is handed
        over in blocks of at most the engine's max_block_span, each at the time of its last sample
        (a real-time rack at 10 Hz: one model call per five samples, one block per sample)."""
        span = start.max_block_span if start.max_block_span > 0 else math.inf
        speed = getattr(self.clock, "speed", math.inf)
        if math.isfinite(speed):
            half = max(0.5 * speed, 1e-3)
            return min(span, half), half
        return span, span

    def _noisy(self, cols: dict[str, np.ndarray]) -> None:
        p = self.preset
        n = len(cols["test_time_second"])
        if not self.noise or n == 0:
            return
        if n == 1 and "real_impedance_ohm" not in cols:
            self._noisy_one(cols)
            return
        v = cols["voltage_volt"] + self.rng.normal(0.0, p.noise_voltage, n)
        i = cols["current_ampere"]
        i = i + self.rng.normal(0.0, 1.0, n) * (p.noise_current + p.noise_current_relative * np.abs(i))
        if p.voltage_resolution > 0:
            v = np.round(v / p.voltage_resolution) * p.voltage_resolution
        if p.current_resolution > 0:
            i = np.round(i / p.current_resolution) * p.current_resolution
        cols["voltage_volt"], cols["current_ampere"] = v, i
        if "temperature_t1_celsius" in cols:
            cols["temperature_t1_celsius"] = cols["temperature_t1_celsius"] + self.rng.normal(0.0, p.noise_temperature, n)
        if "real_impedance_ohm" in cols:
            re, im = cols["real_impedance_ohm"], cols["imaginary_impedance_ohm"]
            mag = np.hypot(re, im) * p.noise_impedance_relative
            cols["real_impedance_ohm"] = re + self.rng.normal(0.0, 1.0, n) * mag
            cols["imaginary_impedance_ohm"] = im + self.rng.normal(0.0, 1.0, n) * mag

    def _noisy_one(self, cols: dict[str, np.ndarray]) -> None:
        """_noisy for a block of one sample (real-time pacing), in place on Python floats: the same
        draws from the generator in the same order, so the same values as the array path."""
        p = self.preset
        temp = cols.get("temperature_t1_celsius")
        z = self.rng.standard_normal(2 if temp is None else 3).tolist()
        vv, ii = cols["voltage_volt"], cols["current_ampere"]
        v = float(vv[0]) + p.noise_voltage * z[0]
        i = float(ii[0])
        i = i + z[1] * (p.noise_current + p.noise_current_relative * abs(i))
        if p.voltage_resolution > 0 and math.isfinite(v):
            v = round(v / p.voltage_resolution) * p.voltage_resolution
        if p.current_resolution > 0 and math.isfinite(i):
            i = round(i / p.current_resolution) * p.current_resolution
        vv[0], ii[0] = v, i
        if temp is not None:
            temp[0] = float(temp[0]) + p.noise_temperature * z[2]

    async def run_step(self, step: Step, start: StepStart) -> AsyncIterator[Block]:
        """Run `step` from `start`; yields Blocks (the last one final=True, with `end` set), each once
        the clock has reached the time of its last sample."""
        for due, block in self._blocks(step, start):
            if len(block):
                await self.clock.sleep_until(due)
            yield block

    def _blocks(self, step: Step, start: StepStart) -> Iterator[tuple[float, Block]]:
        """run_step without the waiting: yields (due, block), `due` being the clock time at which the
        block's last sample is taken. The engine hands each block over once the clock reaches `due`
        (a rack of simulated channels in real time: no task switch per sample). A block is
        computed when it is asked for, as run_step computes it before it waits."""
        offset = self.clock.now() - start.test_time
        sweep_pos = start.extra.get("sweep_position") if start.extra else None
        resume, self._resume = self._resume, None
        deliver, compute = self._spans(start)
        for chunk in run_step(self.model, step, start.test_time, start.step_time, start.step_charge,
                              span=compute, max_samples=self.max_block_samples,
                              sweep_position=sweep_pos, resume=resume, holder=self._live,
                              first_alone=math.isfinite(getattr(self.clock, "speed", math.inf))):
            cols = chunk.columns
            self._noisy(cols)
            truth = None
            if self.truth:
                if chunk.rows is not None:
                    truth = self.model.truth(chunk.rows)
                else:
                    truth = {"temperature_kelvin": cols["temperature_t1_celsius"] + KELVIN}
            t = cols["test_time_second"]
            if len(t) > 1 and deliver < compute:
                yield from _split(cols, truth, chunk, deliver, offset)
                continue
            block = Block(cols, end=chunk.end if chunk.final else None, final=chunk.final, truth=truth)
            yield (float(t[-1]) + offset if len(t) else -math.inf), block

    pull_step = _blocks

    # ---- state ----------------------------------------------------------------------------------

    def save_state(self) -> bytes:
        """The full model state, the noise generator and the clock time (for crash-safe resume).
        At max speed that is the moment of the last block handed over; on a wall clock the model may
        be ahead of it by what it computed at once (up to half a second of wall time)."""
        ss = self._live.get("ss")
        return self.model.save_state({"rng": self.rng.bit_generator.state, "clock": self.clock.now(),
                                      "step": None if ss is None else ss.tolist()})

    def load_state(self, state: bytes) -> None:
        extra = self.model.load_state(state)
        step = extra.get("step")
        self._resume = None if step is None else np.array(step, dtype=float)
        if "rng" in extra:
            self.rng.bit_generator.state = extra["rng"]
        clock_t = extra.get("clock")
        if clock_t is not None and hasattr(self.clock, "advance_to"):
            self.clock.advance_to(float(clock_t))


def _split(cols: dict[str, np.ndarray], truth: dict[str, np.ndarray] | None, chunk, deliver: float,
           offset: float) -> Iterator[tuple[float, Block]]:
    """A computed chunk handed over in blocks spanning less than `deliver` s of test time each (views
    of its columns); the last carries the chunk's end."""
    t = cols["test_time_second"].tolist()
    n = len(t)
    bounds = [0]
    for k in range(1, n):
        if t[k] >= t[bounds[-1]] + deliver * (1.0 - 1e-9):
            bounds.append(k)
    bounds.append(n)
    last = len(bounds) - 2
    for m in range(last + 1):
        a, b = bounds[m], bounds[m + 1]
        sub = {name: arr[a:b] for name, arr in cols.items()}
        sub_truth = None if truth is None else {name: arr[a:b] for name, arr in truth.items()}
        final = chunk.final and m == last
        yield t[b - 1] + offset, Block(sub, end=chunk.end if final else None, final=final, truth=sub_truth)

