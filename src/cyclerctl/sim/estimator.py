"""How long a program takes and how much data it makes, estimated on the simulator.

The estimator walks the Program with the engine's semantics (program counter, gotos of the end
conditions, repeat loops with their counters and conditions, cycle counting) on a noise-free cell
model at full speed. Long loops are not simulated to the end: after a few iterations the cost of
the last one (time and samples) is extrapolated to the remaining count once it has settled (within
1 % of the iteration before, or after 60 iterations), so a 12,000-cycle protocol is estimated in
about a second. Loops whose `until` condition has not held within a budget of
iterations are extrapolated to their `at_most` bound (the estimate is then an upper bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..program import Cell, End, LoopEnd, LoopStart, Program, Step, Sweep
from . import kernel as K
from .model import CellModel
from .preset import Preset
from .steps import run_step

BYTES_PER_SAMPLE = 100  # journal row of the samples table, indexes included (measured order of magnitude)
WARMUP = 3  # iterations simulated at least before a counted loop is extrapolated
SETTLE = 0.01  # ... and until one iteration costs within 1 % of the one before
BUDGET = 60  # ... or this many iterations have run
UNTIL_BUDGET = 40  # iterations simulated for an `until` loop before it is extrapolated to at_most
STEP_CAP = 365 * 86400.0  # a step without a time bound is cut here (the estimate says so)


@dataclass
class _Cycles:
    """The engine's cycle bookkeeping, enough for loop conditions."""

    starts_on: int
    count: int = 1
    last_dir: int = 0
    discharge: dict[int, float] = field(default_factory=dict)
    charge: dict[int, float] = field(default_factory=dict)

    def step_started(self, direction: int) -> None:
        if direction == self.starts_on and self.last_dir == -self.starts_on:
            self.count += 1
        if direction:
            self.last_dir = direction

    def add(self, charge: float) -> None:
        book = self.discharge if charge < 0 else self.charge
        book[self.count] = book.get(self.count, 0.0) + abs(charge)

    def _last_complete(self) -> int | None:
        for c in range(self.count, 0, -1):
            if self.discharge.get(c, 0) > 0 and self.charge.get(c, 0) > 0:
                return c
        return None

    def metric(self, name: str, cell: Cell, reference: int | None) -> float | None:
        c = self._last_complete()
        if name == "cycle_count":
            return float(self.count)
        if c is None:
            return None
        d, q = self.discharge[c], self.charge[c]
        mass = cell.active_mass or math.nan
        values = {
            "coulombic_efficiency": q / d,
            "discharge_capacity": d, "charge_capacity": q,
            "specific_discharge_capacity": d / mass, "specific_charge_capacity": q / mass,
        }
        if name == "capacity_retention":
            ref = reference or 1
            base = self.charge.get(ref)
            return None if not base else q / base
        return values.get(name)


def estimate(program: Program, preset: Preset | str = "hard_carbon", cell: Cell | None = None,
             temperature: float = 298.15) -> dict:
    """Run `program` on the simulator (noise off, full speed) and return
    {duration_s, samples, bytes, cycles, extrapolated, notes}."""
    model = CellModel(preset, cell if cell is not None else program.cell, temperature)
    ins = program.instructions
    cycles = _Cycles(starts_on=-1 if program.cycle_starts_on == "discharge" else 1)
    counters: dict[int, int] = {}
    marks: dict[int, tuple[float, int, int]] = {}  # loop start -> (time, samples, cycle) at its last end
    last_cost: dict[int, float] = {}  # loop start -> duration of its previous iteration
    skipped_time = 0.0
    skipped_samples = 0
    samples = 0
    extrapolated = False
    notes: list[str] = []
    pc = 0
    guard = 0
    while 0 <= pc < len(ins):
        guard += 1
        if guard > 2_000_000:
            raise ConfigError("the estimate did not finish: the program loops without end (check the gotos)")
        ins_ = ins[pc]
        if isinstance(ins_, LoopStart):
            counters[pc] = 0
            marks[pc] = (model.time + skipped_time, samples + skipped_samples, cycles.count)
            last_cost.pop(pc, None)
            pc += 1
            continue
        if isinstance(ins_, LoopEnd):
            start = ins_.start
            loop: LoopStart = ins[start]
            counters[start] = counters.get(start, 0) + 1
            n = counters[start]
            done = False
            if loop.count is not None and n >= loop.count:
                done = True
            if loop.until is not None:
                ref = loop.until.reference_cycle or program.retention_reference_cycle
                if loop.until.holds(cycles.metric(loop.until.metric, program.cell, ref)):
                    done = True
            if loop.at_most is not None and n >= loop.at_most:
                done = True
            t_now, s_now, c_now = model.time + skipped_time, samples + skipped_samples, cycles.count
            t_mark, s_mark, c_mark = marks.get(start, (t_now, s_now, c_now))
            marks[start] = (t_now, s_now, c_now)
            cost = t_now - t_mark
            prev = last_cost.get(start)
            last_cost[start] = cost
            settled = prev is not None and abs(cost - prev) <= SETTLE * max(cost, 1e-9)
            if done:
                pc = loop.end + 1
                continue
            bound = loop.count if loop.count is not None else loop.at_most
            ready = (n >= WARMUP and settled) or n >= BUDGET
            if loop.until is not None:
                ready = n >= UNTIL_BUDGET
            if bound is not None and ready and bound - n > 1:
                rest = bound - n
                skipped_time += rest * (t_now - t_mark)
                skipped_samples += rest * (s_now - s_mark)
                cycles.count += rest * (c_now - c_mark)
                extrapolated = True
                if loop.until is not None:
                    notes.append(f"loop {loop.name or start}: condition not met in {n} iterations; "
                                 f"counted to at_most={loop.at_most}")
                pc = loop.end + 1
                continue
            pc = start + 1
            continue
        step: Step = ins_
        if isinstance(step, Sweep) and not step.resolved:  # from the OCV: the model's potential now
            step = step.at(float(model.st[K.V_LAST]))
        cycles.step_started(step.direction)
        ends = step.ends
        cap = step.limits.step_duration_max if math.isfinite(step.limits.step_duration_max) else STEP_CAP
        ends = (*ends, End("step_time", ">=", cap, label="step duration cap"))
        step_e = _with_ends(step, ends)
        end_idx = None
        t0 = model.time
        q = 0.0
        for chunk in run_step(model, step_e, model.time):
            n = len(chunk.columns["test_time_second"])
            samples += n
            if n > 1:
                t = chunk.columns["test_time_second"]
                i = chunk.columns["current_ampere"]
                q += float(((i[1:] + i[:-1]) * 0.5 * (t[1:] - t[:-1])).sum())
            if chunk.final:
                end_idx = chunk.end
        if step.direction:
            cycles.add(q)
        if end_idx is not None and end_idx == len(ends) - 1:
            notes.append(f"step {step.name!r} ran {model.time - t0:.0f} s without ending; cut there")
            end_idx = None
        goto = step.ends[end_idx].goto if end_idx is not None and end_idx < len(step.ends) else None
        pc = goto if goto is not None else pc + 1
    duration = model.time + skipped_time
    total = samples + skipped_samples
    return {"duration_s": duration, "samples": int(total), "bytes": int(total * BYTES_PER_SAMPLE),
            "cycles": cycles.count, "extrapolated": extrapolated, "notes": notes}


def _with_ends(step: Step, ends: tuple[End, ...]) -> Step:
    import dataclasses

    return dataclasses.replace(step, ends=ends)
