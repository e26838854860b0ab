"""What the engine expects of an instrument channel and a thermostat. A page, not a framework.

A Channel runs one primitive step (cyclerctl.program.Step) at a time with its end conditions and
record rule, and yields Blocks of samples until an end condition fires or the engine stops it.
- Host-stepped instruments (SMUs) implement this with a polling loop on the clock.
- Script-running instruments (MethodSCRIPT) compile the step into a script.
- The simulator computes whole blocks at once (vectorized).
The engine checks the safety limits on every block anyway and calls safe_state() on any breach,
error, pause or stop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from .clock import Clock
from .program import Step

# BDF machine names of the columns a Block may carry (values in BDF units: s, V, A, degC, Hz, ohm).
REQUIRED_COLUMNS = ("test_time_second", "voltage_volt", "current_ampere")
OPTIONAL_COLUMNS = (
    "step_time_second",  # s since the step started (pause excluded)
    "temperature_t1_celsius",  # cell/chamber temperature
    "frequency_hertz",  # EIS rows: one row per frequency
    "real_impedance_ohm",
    "imaginary_impedance_ohm",  # BDF/convention: Z = Z' + j Z'' (Z'' < 0 for capacitive)
    "sweep_segment",  # CV: 0-based linear segment index within the Sweep step
)


@dataclass(slots=True)
class Block:
    """Consecutive samples of one step, oldest first. `columns` maps BDF names to 1-D float64 arrays
    of equal length (may be 0). `end` is the index in step.ends of the end condition that fired at
    the block's last sample (the step is over), or None if the step continues.
    `truth` optionally carries simulator ground truth per sample (e.g. "diffusion_coefficient",
    "surface_stoichiometry", "open_circuit_voltage", "sei_charge"); the analysis never reads it.
    `final` is True on the last block of a step (an end fired, or the step was completed)."""

    columns: dict[str, np.ndarray]
    end: int | None = None
    final: bool = False
    truth: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.columns["test_time_second"])

    @property
    def time(self) -> np.ndarray:
        return self.columns["test_time_second"]

    @property
    def voltage(self) -> np.ndarray:
        return self.columns["voltage_volt"]

    @property
    def current(self) -> np.ndarray:
        return self.columns["current_ampere"]


@dataclass(frozen=True, slots=True)
class StepStart:
    """Where a step (or the rest of a step, after pause or crash-resume) begins.

    test_time: test time (s) of the first sample to produce.
    step_time: time already spent in this step (s; 0 for a fresh step).
    step_charge: charge already passed in this step (C, signed).
    sweep_position: for a resumed Sweep, seconds into the sweep program already done.
    max_block_span: produce a block at least every this many seconds of test time (the engine
    commits per block; the simulator otherwise may produce a whole step in one block)."""

    test_time: float
    step_time: float = 0.0
    step_charge: float = 0.0
    max_block_span: float = float("inf")
    extra: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The capability envelope the compiler checks a protocol against before a run."""

    model: str = "generic"
    techniques: frozenset[str] = frozenset({"rest", "current", "voltage", "sweep", "impedance", "temperature"})
    voltage_range: tuple[float, float] = (-10.0, 10.0)  # V
    current_max: float = 1.0  # A, |I|
    current_resolution: float = 0.0  # A
    voltage_resolution: float = 0.0  # V
    scan_rate_range: tuple[float, float] = (1e-6, 10.0)  # V/s
    frequency_range: tuple[float, float] = (1e-5, 1e6)  # Hz
    min_sample_period: float = 0.0  # s
    temperature_range: tuple[float, float] | None = None  # K, when a thermostat is attached
    real_hardware: bool = False  # True: the engine refuses any speed but 1


@runtime_checkable
class Channel(Protocol):
    """One working electrode/cell connection on an instrument."""

    name: str
    capabilities: Capabilities
    clock: Clock

    async def open(self) -> None:
        """Connect and put the output in its safe state."""

    def run_step(self, step: Step, start: StepStart) -> AsyncIterator[Block]:
        """Run `step` from `start`, yielding Blocks until one with final=True. The engine may stop
        iterating at any time (aclose()); the channel must then leave the output as it was and the
        engine calls safe_state(). Raises InstrumentError on instrument failure."""

    async def safe_state(self) -> None:
        """Output off in high-impedance mode (never a 0 V short across the cell). Must not raise
        for an already-safe channel; best effort on a failing instrument."""

    async def close(self) -> None:
        """Safe state, then release the transport."""

    def save_state(self) -> bytes | None:
        """Opaque state to journal with each commit (the simulator's full model state), or None
        for real hardware. Reflects the moment just after the last yielded block."""

    def load_state(self, state: bytes) -> None:
        """Restore what save_state() returned (crash-safe resume of a simulated channel)."""


@runtime_checkable
class Thermostat(Protocol):
    """A climate chamber or Peltier stage."""

    name: str

    async def set_temperature(self, kelvin: float) -> None: ...

    async def read_temperature(self) -> float:
        """The measured temperature in K."""

    async def safe_state(self) -> None:
        """Hold a safe temperature (usually ambient) or stop heating/cooling."""

    async def close(self) -> None: ...


def empty_block(final: bool = False, end: int | None = None) -> Block:
    """A block with no samples (e.g. a step that ended before producing a new sample)."""
    z = np.empty(0, dtype=np.float64)
    return Block({c: z.copy() for c in REQUIRED_COLUMNS}, end=end, final=final)
