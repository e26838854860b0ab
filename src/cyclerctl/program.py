"""The compiled Program: what the engine executes. Produced by cyclerctl.protocol.compile_protocol.

A Program is a flat tuple of instructions. Each instruction is either a primitive step (one thing a
Channel can do: Rest, ConstantCurrent, ConstantVoltage, Sweep, Impedance, SetTemperature) or a loop
marker (LoopStart/LoopEnd). for_each sweeps are unrolled by the compiler; repeat loops are not (a
12,000-cycle test is a 2-step body and a counter). GITT and ICI compile to loops of
ConstantCurrent + Rest steps whose `technique` tag tells the analysis what they are.

All values are SI: s, V, A, C (charge), K, Hz, V/s. Sign convention (BDF): positive current = charge.
In an anode half cell (hard carbon or Sn vs Na) sodiation is the discharge: negative current.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

# ---- cell ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cell:
    """The cell under test (SI: kg, m^2, C/kg). Specific currents and C-rates are resolved from it."""

    name: str = "cell"
    active_mass: float | None = None  # kg of active material in the working electrode
    area: float | None = None  # m^2 geometric electrode area
    nominal_specific_capacity: float | None = None  # C/kg (1 mAh/g = 3600 C/kg); defines 1C
    material: str = ""
    counter_electrode: str = "Na metal"
    kind: Literal["anode_half_cell", "cathode_half_cell", "full_cell"] = "anode_half_cell"
    particle_radius: float | None = None  # m, mean active-particle radius (GITT/EIS diffusion coefficients)

    @property
    def nominal_capacity(self) -> float | None:
        """Nominal capacity in C (nominal specific capacity x active mass)."""
        if self.active_mass is None or self.nominal_specific_capacity is None:
            return None
        return self.active_mass * self.nominal_specific_capacity

    @property
    def one_c_current(self) -> float | None:
        """The current (A) of 1C."""
        q = self.nominal_capacity
        return None if q is None else q / 3600.0


# ---- rules and limits ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """When to record a sample: whenever any enabled criterion is met since the last recorded sample.
    The first and last sample of a step are always recorded."""

    every: float | None = 10.0  # s
    voltage_change: float | None = None  # V
    current_change: float | None = None  # A


@dataclass(frozen=True, slots=True)
class Limits:
    """Safety limits: never crossed in any step. Distinct from end conditions: a breach is a fault
    (safe state, fault event), never a normal transition."""

    voltage_min: float = -math.inf  # V
    voltage_max: float = math.inf  # V
    current_max: float = math.inf  # A, on |I|
    temperature_min: float = -math.inf  # K
    temperature_max: float = math.inf  # K
    step_duration_max: float = math.inf  # s

    def merged(self, other: Limits) -> Limits:
        """The tighter of the two (global safety combined with a per-step limit)."""
        return Limits(
            voltage_min=max(self.voltage_min, other.voltage_min),
            voltage_max=min(self.voltage_max, other.voltage_max),
            current_max=min(self.current_max, other.current_max),
            temperature_min=max(self.temperature_min, other.temperature_min),
            temperature_max=min(self.temperature_max, other.temperature_max),
            step_duration_max=min(self.step_duration_max, other.step_duration_max),
        )


EndQuantity = Literal[
    "step_time",  # s since the step started (pause time excluded)
    "voltage",  # V, terminal voltage
    "current",  # A, signed
    "abs_current",  # A, |I| (CV-hold cutoff)
    "abs_step_charge",  # C, |charge passed in this step|
    "abs_dv_dt",  # V/s, |dV/dt| (rest until relaxed); evaluated over a window, see End.window
    "temperature",  # K, cell/chamber temperature
]

NEXT = None  # End.goto value meaning "the next instruction"


@dataclass(frozen=True, slots=True)
class End:
    """An end condition of a primitive step: the step ends as soon as `quantity op value` holds.

    `goto` is the index of the instruction to continue at (None = the next instruction). The
    simulator locates the crossing between record points (cutoff met to < 0.1 mV); host-polled
    instruments detect it at the next reading."""

    quantity: EndQuantity
    op: Literal["<=", ">="]
    value: float
    goto: int | None = NEXT
    label: str = ""  # as the user wrote it, e.g. "until 0 V"
    window: float = 0.0  # s; for abs_dv_dt: slope over this trailing window (0 = between records)

    def holds(self, x: float) -> bool:
        return x <= self.value if self.op == "<=" else x >= self.value


Technique = Literal["gcd", "rest", "cccv", "gitt", "ici", "cv", "eis", "temperature", "ocv"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepBase:
    """What every primitive step has.

    step_id: the index of the user's step in the protocol file (BDF Step ID); several primitive
    steps may share it (a GITT block is one user step). name: a readable description.
    direction: -1 discharge (sodiation), +1 charge, 0 neither; used for cycle counting.
    technique/tags: what the analysis needs to know (e.g. {"pulse": 3} for GITT)."""

    step_id: int
    name: str
    ends: tuple[End, ...] = ()
    record: Record = field(default_factory=Record)
    limits: Limits = field(default_factory=Limits)  # global safety merged with per-step limits
    direction: int = 0
    technique: Technique = "gcd"
    tags: tuple[tuple[str, str | int | float], ...] = ()
    source_line: int | None = None  # line in the protocol file, for messages

    @property
    def step_type(self) -> str:
        """BDF Step Type: CC_CHG, CC_DCHG, CV_CHG, CV_DCHG, REST, OCV, EIS, CV_SWEEP, TEMP."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class Rest(StepBase):
    """Open circuit (current zero, output high impedance). Ends: time and/or |dV/dt| threshold."""

    technique: Technique = "rest"

    @property
    def step_type(self) -> str:
        return "OCV" if self.technique == "ocv" else "REST"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConstantCurrent(StepBase):
    """Galvanostatic: hold `current` (A, + = charge). `voltage_compliance` is the instrument's
    protective voltage limit (usually the safety window), not an end condition."""

    current: float

    @property
    def step_type(self) -> str:
        return "CC_CHG" if self.current > 0 else "CC_DCHG"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConstantVoltage(StepBase):
    """Potentiostatic hold at `voltage` (V) with current compliance `current_limit` (A, on |I|)."""

    voltage: float
    current_limit: float = math.inf

    @property
    def step_type(self) -> str:
        return "CV_DCHG" if self.direction < 0 else "CV_CHG"


@dataclass(frozen=True, slots=True, kw_only=True)
class Sweep(StepBase):
    """Cyclic voltammetry: linear potential sweep from `start` through `vertices` in order, repeated
    `cycles` times, at `scan_rate` (V/s, > 0). One CV cycle = start -> v1 -> v2 (-> ...) -> start;
    with `end_at_start` False the first cycle is start -> v1 -> ... -> vn and each further one starts
    where the previous ended: vn -> v1 -> ... -> vn (the potential never jumps). Samples carry the
    segment (sweep) number; a half-cycle ends at each vertex.

    from_ocv: the sweep starts at the open-circuit potential, which is known only when the step
    starts: the compiled step has start = NaN and the engine runs `at(V)` with the potential it
    measured last (a rest or OCV step before the sweep)."""

    start: float
    vertices: tuple[float, ...]
    scan_rate: float
    cycles: int = 1
    end_at_start: bool = True  # return to `start` at the end of each cycle
    from_ocv: bool = False

    @property
    def step_type(self) -> str:
        return "CV_SWEEP"

    @property
    def resolved(self) -> bool:
        """The start potential is known (always, unless from_ocv and not yet started)."""
        return not math.isnan(self.start)

    def at(self, start: float) -> Sweep:
        """This sweep starting at `start` (V): a from_ocv sweep once its open-circuit potential is known."""
        return replace(self, start=float(start))

    def segments(self) -> list[tuple[float, float]]:
        """(from, to) of every linear segment, in order, over all cycles. Before a from_ocv sweep is
        resolved its first segment starts at the first vertex (length unknown, taken as 0)."""
        start = self.start if self.resolved else self.vertices[0]
        pts = [start, *self.vertices]
        if self.end_at_start:
            pts.append(start)
            one = list(zip(pts[:-1], pts[1:], strict=True))
            return one * self.cycles
        first = list(zip(pts[:-1], pts[1:], strict=True))
        loop = [self.vertices[-1], *self.vertices]
        again = list(zip(loop[:-1], loop[1:], strict=True))
        return first + again * (self.cycles - 1)

    @property
    def duration(self) -> float:
        """Seconds of the whole sweep (of a from_ocv sweep not yet resolved: without the way from the
        open-circuit potential to the first vertex, and back to it with end_at_start)."""
        return sum(abs(b - a) for a, b in self.segments()) / self.scan_rate


@dataclass(frozen=True, slots=True, kw_only=True)
class Impedance(StepBase):
    """EIS: small-signal impedance from `freq_start` to `freq_stop` (Hz, logarithmic,
    `points_per_decade`). Potentiostatic: `amplitude` in V (rms); galvanostatic: in A (rms).
    `bias`: None = at the open-circuit potential (zero DC current); else the DC bias in V
    (potentiostatic) or A (galvanostatic).
    `acquisition`: "spectrum" = the instrument measures Z at each frequency (a frequency-response
    analyser; one row per frequency); "waveform" = the channel applies the sine and records voltage
    and current as samples (`samples_per_period` per period, one settling period and then `periods`
    periods per frequency) and the analysis demodulates them."""

    mode: Literal["potentiostatic", "galvanostatic"] = "potentiostatic"
    freq_start: float = 1e5
    freq_stop: float = 1e-2
    points_per_decade: int = 10
    amplitude: float = 5e-3
    bias: float | None = None
    acquisition: Literal["spectrum", "waveform"] = "spectrum"
    samples_per_period: int = 64
    periods: int = 4
    technique: Technique = "eis"

    @property
    def step_type(self) -> str:
        return "EIS"

    def frequencies(self) -> list[float]:
        """The measured frequencies, in sweep order."""
        lo, hi = math.log10(self.freq_start), math.log10(self.freq_stop)
        n = max(1, int(round(abs(hi - lo) * self.points_per_decade))) + 1
        return [10 ** (lo + (hi - lo) * k / (n - 1)) for k in range(n)] if n > 1 else [self.freq_start]


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTemperature(StepBase):
    """Set the chamber/stage to `temperature` (K) and wait until the temperature stays within
    ±`tolerance` (K) for `stable_for` (s). Failing to settle within `timeout` (s) is a fault.
    The cell rests (open circuit) and is recorded meanwhile."""

    temperature: float
    tolerance: float = 0.5
    stable_for: float = 600.0
    timeout: float = 4 * 3600.0
    technique: Technique = "temperature"

    @property
    def step_type(self) -> str:
        return "TEMP"


Step = Rest | ConstantCurrent | ConstantVoltage | Sweep | Impedance | SetTemperature

# ---- control flow ---------------------------------------------------------------------------------

Metric = Literal[
    "coulombic_efficiency",  # fraction, of the last completed cycle (anode: desodiation/sodiation)
    "discharge_capacity",  # C, last completed cycle
    "charge_capacity",  # C, last completed cycle
    "specific_discharge_capacity",  # C/kg
    "specific_charge_capacity",  # C/kg
    "capacity_retention",  # fraction: last cycle's reversible capacity / that of `reference_cycle`
    "cycle_count",  # the current cycle number
]


@dataclass(frozen=True, slots=True)
class Condition:
    """A loop condition on a live metric, evaluated when the loop body has completed an iteration.
    True when `metric op value` (for capacity_retention, relative to `reference_cycle`)."""

    metric: Metric
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    value: float
    reference_cycle: int | None = None
    text: str = ""  # as written, for messages

    def holds(self, x: float | None) -> bool:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return False
        return {
            "<": x < self.value, "<=": x <= self.value, ">": x > self.value,
            ">=": x >= self.value, "==": x == self.value, "!=": x != self.value,
        }[self.op]


@dataclass(frozen=True, slots=True)
class LoopStart:
    """Start of a repeat loop. On entry its counter is set to 0. `end` is the index of its LoopEnd."""

    loop_id: int
    end: int
    count: int | None = None  # repeat exactly N times
    until: Condition | None = None  # or until a condition holds (checked after each iteration)
    at_most: int | None = None  # upper bound on iterations for `until` loops (a way out)
    name: str = ""


@dataclass(frozen=True, slots=True)
class LoopEnd:
    """End of a loop body: counter += 1; leave the loop when the count is reached, the condition
    holds or at_most is reached; otherwise continue at start + 1."""

    loop_id: int
    start: int


Instruction = Step | LoopStart | LoopEnd


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled protocol for one cell.

    cycle_starts_on: a new cycle (BDF cycle_count += 1) starts when a step of this direction begins
    after a step of the opposite direction has run ("discharge" for anode half cells: sodiation
    first, so CE = desodiation/sodiation of the same cycle). cycle_count is 1 before the first cycle.
    labels: user labels -> instruction index (for display)."""

    name: str
    instructions: tuple[Instruction, ...]
    cell: Cell
    safety: Limits
    cycle_starts_on: Literal["discharge", "charge"] = "discharge"
    record: Record = field(default_factory=Record)
    labels: tuple[tuple[str, int], ...] = ()
    source: str = ""  # protocol file path
    protocol_hash: str = ""  # sha256 of the protocol text
    retention_reference_cycle: int | None = None

    def steps(self) -> list[Step]:
        return [i for i in self.instructions if not isinstance(i, (LoopStart, LoopEnd))]
