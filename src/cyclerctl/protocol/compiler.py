"""Protocol + cell (+ instrument capabilities) -> Program: flat primitive steps with SI setpoints,
end conditions with goto targets, loop markers and record rules.

What the compiler refuses, each with the file location:
- a step that can never end (no end condition);
- a setpoint outside the safety limits or the instrument's capabilities;
- a voltage end the safety window never lets the step reach; a sweep outside the voltage window;
- a goto to a missing label, or into a loop body from outside it;
- a loop with no way out (repeat until ... without at_most), or a cycle-metric loop whose body
  never completes a cycle.

Loops: `repeat` compiles to LoopStart/LoopEnd (never unrolled); `for_each` is unrolled, with $name
replaced in the body's quantities. GITT and ICI compile to loops of ConstantCurrent + Rest steps
tagged with their technique and role.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from .. import units
from ..channel import Capabilities
from ..errors import ProtocolError, UnitError
from ..program import (
    Cell,
    ConstantCurrent,
    ConstantVoltage,
    End,
    Impedance,
    Instruction,
    Limits,
    LoopEnd,
    LoopStart,
    Program,
    Record,
    Rest,
    SetTemperature,
    Sweep,
)
from . import schema
from .cell import context, resolve_cell
from .conditions import ConditionError, StepContext, parse_end, parse_loop_condition, parse_quantity
from .loader import dotted, raise_all
from .yamlsafe import locate

END_LABEL = "end"  # goto: end finishes the program
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")
DEFAULT_DV_DT_WINDOW = 600.0  # s: |dV/dt| of a rest is judged over the last 10 minutes
MAX_INSTRUCTIONS = 200_000


class _StepFailed(Exception):
    """Internal: the current step has errors (already recorded); skip to the next."""


OCV_WORDS = ("ocv", "ocp", "open circuit")  # a sweep start meaning: the open-circuit potential

@dataclass
class _Goto:
    instr: int
    end: int
    label: str
    scope: tuple[int, ...]
    path: tuple


@dataclass
class _Label:
    index: int
    scope: tuple[int, ...]
    path: tuple


@dataclass
class _Frame:
    """Where we are: the scope chain (loops and for_each iterations) and the for_each variables."""

    scope: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


class Compiler:
    def __init__(self, protocol: schema.Protocol, cell: Cell, capabilities: Capabilities | None) -> None:
        self.p = protocol
        self.file = protocol._file
        self.locs = protocol._locations
        self.cell = cell
        self.ctx = context(cell)
        self.caps = capabilities
        self.out: list[Instruction] = []
        self.errors: list[ProtocolError] = []
        self.labels: dict[str, list[_Label]] = {}
        self.label_first: dict[str, int] = {}
        self.gotos: list[_Goto] = []
        self.next_scope = 0
        self.next_loop = 0
        self.step_id = 0
        self.frame = _Frame()
        self.paths: dict[int, tuple] = {}  # instruction index -> the step's path in the file

    # ---- errors and quantities -------------------------------------------------------------------

    def err(self, path: tuple, message: str, key: bool = False) -> ProtocolError:
        line, col = locate(self.locs, path, key=key)
        where = dotted(path)
        return ProtocolError(f"{where}: {message}" if where else message, self.file, line, col)

    def fail(self, path: tuple, message: str) -> _StepFailed:
        self.errors.append(self.err(path, message))
        return _StepFailed()

    def subst(self, value: Any, path: tuple) -> Any:
        if not isinstance(value, str) or "$" not in value:
            return value

        def one(m: re.Match) -> str:
            name = m.group(1) or m.group(2)
            if name not in self.frame.env:
                known = ", ".join(f"${k}" for k in self.frame.env) or "none here"
                raise self.fail(path, f"unknown variable ${name} (defined by for_each: {known})")
            return self.frame.env[name]

        return _VAR.sub(one, value)

    def q(self, value: Any, kind: str, path: tuple) -> float:
        """A quantity in SI, with $variables replaced; errors carry the field's location."""
        text = self.subst(value, path)
        try:
            v = parse_quantity(text, kind, self.ctx)
        except UnitError as exc:
            raise self.fail(path, str(exc)) from None
        if not math.isfinite(v):
            raise self.fail(path, f"{text!r} is too large")
        return v

    def positive(self, value: Any, kind: str, path: tuple, what: str) -> float:
        v = self.q(value, kind, path)
        if not v > 0:
            raise self.fail(path, f"{what} must be positive, got {self.subst(value, path)!r}")
        return v

    # ---- limits and record -----------------------------------------------------------------------

    def limits(self, spec: schema.LimitsSpec | None, path: tuple) -> Limits:
        if spec is None:
            return Limits()
        kw: dict[str, float] = {}
        if spec.voltage is not None:
            lo = self.q(spec.voltage[0], "voltage", (*path, "voltage", 0))
            hi = self.q(spec.voltage[1], "voltage", (*path, "voltage", 1))
            if not lo < hi:
                raise self.fail((*path, "voltage"), "the voltage window is [min, max] with min < max")
            kw.update(voltage_min=lo, voltage_max=hi)
        if spec.current is not None:
            kw["current_max"] = abs(self.positive(spec.current, "current", (*path, "current"), "the current limit"))
        if spec.temperature is not None:
            lo = self.q(spec.temperature[0], "temperature", (*path, "temperature", 0))
            hi = self.q(spec.temperature[1], "temperature", (*path, "temperature", 1))
            if not lo < hi:
                raise self.fail((*path, "temperature"), "the temperature window is [min, max] with min < max")
            kw.update(temperature_min=lo, temperature_max=hi)
        if spec.step_duration is not None:
            kw["step_duration_max"] = self.positive(spec.step_duration, "time", (*path, "step_duration"),
                                                    "the step duration limit")
        return Limits(**kw)

    def record(self, spec: schema.RecordSpec | None, path: tuple, base: Record) -> Record:
        if spec is None:
            return base
        kw: dict[str, float] = {}
        for name, kind in (("every", "time"), ("voltage_change", "voltage"), ("current_change", "current")):
            value = getattr(spec, name)
            if value is not None:
                kw[name] = abs(self.positive(value, kind, (*path, name), f"record {name}"))
        if self.caps is not None and kw.get("every") is not None and kw["every"] < self.caps.min_sample_period:
            raise self.fail((*path, "every"), f"records every {units.fmt(kw['every'], 'time')} but the "
                            f"instrument samples at most every {units.fmt(self.caps.min_sample_period, 'time')}")
        return replace(base, **kw)

    # ---- checks against safety and capabilities --------------------------------------------------

    def check_current(self, current: float, limits: Limits, path: tuple) -> None:
        if current == 0:
            raise self.fail(path, "the current must not be zero (use a rest step for open circuit)")
        if abs(current) > limits.current_max:
            raise self.fail(path, f"{units.fmt(current, 'current')} is outside the safety limits "
                            f"(|I| <= {units.fmt(limits.current_max, 'current')})")
        if self.caps is not None and abs(current) < self.caps.current_resolution:
            raise self.fail(path, f"{units.fmt(current, 'current')} is below the resolution of the instrument "
                            f"{self.caps.model} ({units.fmt(self.caps.current_resolution, 'current')})")
        if self.caps is not None and abs(current) > self.caps.current_max:
            raise self.fail(path, f"{units.fmt(current, 'current')} is beyond the instrument "
                            f"{self.caps.model} (|I| <= {units.fmt(self.caps.current_max, 'current')})")

    def check_voltage(self, v: float, limits: Limits, path: tuple, what: str = "") -> None:
        if not limits.voltage_min <= v <= limits.voltage_max:
            raise self.fail(path, f"{what}{units.fmt(v, 'voltage')} is outside the safety voltage window "
                            f"[{units.fmt(limits.voltage_min, 'voltage')}, {units.fmt(limits.voltage_max, 'voltage')}]")
        if self.caps is not None:
            lo, hi = self.caps.voltage_range
            if not lo <= v <= hi:
                raise self.fail(path, f"{what}{units.fmt(v, 'voltage')} is beyond the instrument "
                                f"{self.caps.model} ({units.fmt(lo, 'voltage')} to {units.fmt(hi, 'voltage')})")

    def check_technique(self, technique: str, path: tuple) -> None:
        if self.caps is not None and technique not in self.caps.techniques:
            raise self.fail(path, f"the instrument {self.caps.model} cannot do {technique} steps")

    def check_ends(self, ends: list[End], limits: Limits, path: tuple, direction: int) -> None:
        for end in ends:
            if end.quantity == "temperature" and self.caps is not None and self.caps.temperature_range is None:
                raise self.fail(path, "a temperature end needs a thermostat")
            if end.quantity != "voltage":
                continue
            if end.op == "<=" and end.value < limits.voltage_min:
                raise self.fail(path, f"the step would never reach {units.fmt(end.value, 'voltage')}: the safety "
                                f"window stops it at {units.fmt(limits.voltage_min, 'voltage')}")
            if end.op == ">=" and end.value > limits.voltage_max:
                raise self.fail(path, f"the step would never reach {units.fmt(end.value, 'voltage')}: the safety "
                                f"window stops it at {units.fmt(limits.voltage_max, 'voltage')}")
            if end.quantity == "temperature" and self.caps is not None and self.caps.temperature_range is None:
                raise self.fail(path, "a temperature end needs a thermostat")

    # ---- ends --------------------------------------------------------------------------------------

    def ends(self, for_: Any, until: list[schema.EndSpec] | None, path: tuple,
             sctx: StepContext) -> tuple[list[End], list[tuple[int, str, tuple]]]:
        """Ends of a step and the gotos to resolve later: [(end index, label, path)]."""
        out: list[End] = []
        gotos: list[tuple[int, str, tuple]] = []
        if for_ is not None:
            t = self.positive(for_, "time", (*path, "for"), "the step time")
            out.append(End("step_time", ">=", t, label=f"for {self.subst(for_, path)}"))
        for i, spec in enumerate(until or []):
            p = (*path, "until", i, "when")
            text = self.subst(spec.when, p)
            try:
                end = parse_end(text, sctx)
            except (ConditionError, UnitError) as exc:
                raise self.fail(p, str(exc)) from None
            if spec.goto is not None:
                gotos.append((len(out), spec.goto, (*path, "until", i, "goto")))
                end = replace(end, label=f"{end.label} -> {spec.goto}")
            out.append(end)
        return out, gotos

    def add_gotos(self, instr: int, gotos: list[tuple[int, str, tuple]]) -> None:
        for end_index, label, path in gotos:
            self.gotos.append(_Goto(instr, end_index, label, self.frame.scope, path))

    # ---- emission ------------------------------------------------------------------------------------

    def emit(self, instr: Instruction) -> int:
        if len(self.out) >= MAX_INSTRUCTIONS:
            raise ProtocolError(f"the compiled program is too long (more than {MAX_INSTRUCTIONS} steps); "
                                "use repeat instead of long for_each lists", self.file, 1, 1)
        self.out.append(instr)
        return len(self.out) - 1

    def define_label(self, label: str | None, path: tuple, index: int) -> None:
        if label is None:
            return
        p = (*path, "label")
        if not _LABEL.match(label) or label == END_LABEL:
            raise self.fail(p, f"a label is a name such as 'formation' (letters, digits, _ . -), "
                            f"not {label!r}" + (f"; {END_LABEL!r} is reserved" if label == END_LABEL else ""))
        defs = self.labels.setdefault(label, [])
        for d in defs:
            if d.path != path:
                line = locate(self.locs, (*d.path, "label"))[0]
                raise self.fail(p, f"the label {label!r} is already used at line {line}")
        defs.append(_Label(index, self.frame.scope, path))
        self.label_first.setdefault(label, index)

    def common(self, item: schema.Common, path: tuple) -> tuple[Limits, Record, str | None]:
        limits = self.safety.merged(self.limits(item.limits, (*path, "limits")))
        rec = self.record(item.record, (*path, "record"), self.base_record)
        name = _VAR.sub(lambda m: self.frame.env.get(m.group(1) or m.group(2), m.group(0)), item.name) \
            if item.name else None
        return limits, rec, name

    def line(self, path: tuple) -> int:
        return locate(self.locs, path)[0]

    # ---- the walk ------------------------------------------------------------------------------------

    def compile(self) -> Program:
        p = self.p
        if p.safety is None or p.safety.voltage is None or p.safety.current is None:
            self.errors.append(self.err(("safety",) if p.safety is not None else (),
                                        "the protocol needs a safety block with a voltage window and a "
                                        "maximum current, e.g. safety: {voltage: [-0.05 V, 3 V], current: 5 mA}"))
        try:
            self.safety = self.limits(p.safety, ("safety",))
        except _StepFailed:
            self.safety = Limits()
        try:
            self.base_record = self.record(p.record, ("record",), Record())
        except _StepFailed:
            self.base_record = Record()
        self.steps(p.steps, ("steps",))
        self.resolve_gotos()
        if not self.errors:
            self.check_way_out()
        raise_all(self.errors)
        text = p._text
        return Program(
            name=p.name, instructions=tuple(self.out), cell=self.cell, safety=self.safety,
            cycle_starts_on=p.cycle_starts_on, record=self.base_record,
            labels=tuple(sorted(self.label_first.items(), key=lambda kv: kv[1])),
            source=self.file, protocol_hash=hashlib.sha256(text.encode()).hexdigest() if text else "",
            retention_reference_cycle=p.retention_reference_cycle)

    def steps(self, items: list, path: tuple) -> None:
        for i, item in enumerate(items):
            self.item(item, (*path, i))

    def item(self, item: schema.Common, path: tuple) -> None:
        if isinstance(item, schema.TextStep):
            from .steptext import parse_step_text

            try:
                inner = parse_step_text(self.subst(item.step, (*path, "step")))
            except _StepFailed:
                return
            except ValueError as exc:  # PydanticCustomError
                self.errors.append(self.err((*path, "step"), str(exc)))
                return
            item = inner.model_copy(update={"label": item.label, "name": item.name or inner.name,
                                            "record": item.record or inner.record, "limits": item.limits})
        if isinstance(item, schema.RepeatStep):
            return self.repeat(item, path)
        if isinstance(item, schema.ForEachStep):
            return self.for_each(item, path)
        self.step_id += 1
        start = len(self.out)
        try:
            self.define_label(item.label, path, start)
        except _StepFailed:
            pass
        try:
            handler = _HANDLERS[type(item)]
            handler(self, item, path)
        except _StepFailed:
            del self.out[start:]
            self.gotos = [g for g in self.gotos if g.instr < start]
        for index in range(start, len(self.out)):
            self.paths[index] = path

    # ---- control flow ------------------------------------------------------------------------------

    def _scoped(self, env: dict[str, str] | None = None) -> _Frame:
        """A new scope (a loop body or one for_each iteration), inheriting the variables."""
        self.next_scope += 1
        return _Frame((*self.frame.scope, self.next_scope), {**self.frame.env, **(env or {})})

    def repeat(self, item: schema.RepeatStep, path: tuple) -> None:
        rule = item.repeat
        rp = (*path, "repeat")
        try:
            self.common(item, path)  # loops carry no setpoint; still validate the keys
            until = None
            if rule.until is not None:
                try:
                    until = parse_loop_condition(self.subst(rule.until, (*rp, "until")), self.ctx,
                                                 self.p.retention_reference_cycle)
                except (ConditionError, UnitError) as exc:
                    raise self.fail((*rp, "until"), str(exc)) from None
                if rule.at_most is None:
                    raise self.fail((*rp, "until"), f"the loop 'until {rule.until}' has no way out if the "
                                    "condition never holds: add at_most: N")
            elif rule.at_most is not None:
                raise self.fail((*rp, "at_most"), "at_most bounds an 'until' loop; with 'times' it is not used")
        except _StepFailed:
            return
        self.next_loop += 1
        loop_id = self.next_loop
        start = self.emit(LoopStart(loop_id, end=-1, count=rule.times, until=until, at_most=rule.at_most,
                                    name=item.name or item.label or "repeat"))
        self.paths[start] = path
        try:
            self.define_label(item.label, path, start)
        except _StepFailed:
            pass
        outer = self.frame
        self.frame = self._scoped()
        try:
            self.steps(item.steps, (*path, "steps"))
        finally:
            self.frame = outer
        end = self.emit(LoopEnd(loop_id, start=start))
        self.paths[end] = path
        self.out[start] = replace(self.out[start], end=end)
        if until is not None and until.metric != "cycle_count":
            body = [s for s in self.out[start + 1:end] if not isinstance(s, (LoopStart, LoopEnd))]
            dirs = {s.direction for s in body}
            if not {-1, 1} <= dirs:
                self.errors.append(self.err((*rp, "until"), f"'{rule.until}' looks at the last completed cycle, "
                                            "but the loop body never charges and discharges, so it never completes one"))

    def for_each(self, item: schema.ForEachStep, path: tuple) -> None:
        fp = (*path, "for_each")
        spec = dict(item.for_each)
        unit = spec.pop("unit", None)
        if unit is not None and not isinstance(unit, str):
            self.errors.append(self.err((*fp, "unit"), "unit is text such as 'mV/s'"))
            return
        if not spec:
            self.errors.append(self.err(fp, "for_each needs a variable and its values, e.g. {scan_rate: [0.1 mV/s, 0.5 mV/s]}"))
            return
        values: dict[str, list[str]] = {}
        for name, raw in spec.items():
            vp = (*fp, name)
            if not re.match(r"^[A-Za-z_]\w*$", name):
                self.errors.append(self.err(vp, f"a variable name is a word such as scan_rate, not {name!r}", key=True))
                return
            try:
                values[name] = _values(raw, unit)
            except ValueError as exc:
                self.errors.append(self.err(vp, str(exc)))
                return
        lengths = {len(v) for v in values.values()}
        if len(lengths) != 1:
            self.errors.append(self.err(fp, "the for_each lists must have the same length"))
            return
        if item.label is not None:
            try:
                self.define_label(item.label, path, len(self.out))
            except _StepFailed:
                pass
        try:
            self.common(item, path)
        except _StepFailed:
            return
        outer = self.frame
        for k in range(lengths.pop()):
            self.frame = self._scoped({name: vals[k] for name, vals in values.items()})
            try:
                self.steps(item.steps, (*path, "steps"))
            finally:
                self.frame = outer

    def resolve_gotos(self) -> None:
        n = len(self.out)
        for g in self.gotos:
            if g.label == END_LABEL:
                target = n
            else:
                defs = self.labels.get(g.label)
                if not defs:
                    known = ", ".join(sorted(self.labels)) or "none defined"
                    self.errors.append(self.err(g.path, f"goto {g.label!r}: no step has that label "
                                                f"(labels: {known}; 'end' finishes the program)"))
                    continue
                visible = [d for d in defs if d.scope == g.scope[:len(d.scope)]]
                if not visible:
                    self.errors.append(self.err(g.path, f"goto {g.label!r} jumps into a loop or for_each body "
                                                "from outside it; put the label on the loop itself"))
                    continue
                target = max(visible, key=lambda d: len(d.scope)).index
            step = self.out[g.instr]
            ends = list(step.ends)  # type: ignore[union-attr]
            ends[g.end] = replace(ends[g.end], goto=target)
            self.out[g.instr] = replace(step, ends=tuple(ends))  # type: ignore[arg-type]


    def check_way_out(self) -> None:
        """Refuse a program that can get stuck: an instruction it can reach from which no path leads
        to the end (gotos that only ever lead back). Loops with a count or at_most always exit."""
        n = len(self.out)
        succ: list[list[int]] = []
        for i, ins in enumerate(self.out):
            if isinstance(ins, LoopStart):
                succ.append([i + 1])
            elif isinstance(ins, LoopEnd):
                succ.append([ins.start + 1, self.out[ins.start].end + 1])  # type: ignore[union-attr]
            else:
                nxt = [i + 1 if e.goto is None else e.goto for e in ins.ends]
                if not ins.ends or isinstance(ins, (Sweep, Impedance, SetTemperature)):
                    nxt.append(i + 1)
                succ.append(nxt)
        reached, todo = {0}, [0]
        while todo:
            i = todo.pop()
            for j in succ[i] if i < n else ():
                if j not in reached:
                    reached.add(j)
                    todo.append(j)
        pred: dict[int, list[int]] = {}
        for i, nxt in enumerate(succ):
            for j in nxt:
                pred.setdefault(j, []).append(i)
        finish, todo = {n}, [n]
        while todo:
            for j in pred.get(todo.pop(), []):
                if j not in finish:
                    finish.add(j)
                    todo.append(j)
        stuck = sorted(i for i in reached if i < n and i not in finish)
        if stuck:
            jumps = [i for i in stuck if not isinstance(self.out[i], (LoopStart, LoopEnd))
                     and any(e.goto is not None for e in self.out[i].ends)]  # type: ignore[union-attr]
            i = (jumps or stuck)[0]
            self.errors.append(self.err(self.paths.get(i, ()), "a loop with no way out: from this step every "
                                        "end leads back, so the program can never finish; give one end that "
                                        "goes on (or 'goto: end')"))


def _values(raw: Any, unit: str | None) -> list[str]:
    """for_each values as quantity texts: [0.1 mV/s, 0.2 mV/s], "[0.1, 0.2] mV/s", or numbers + unit."""
    if isinstance(raw, str):
        m = re.match(r"^\s*\[(?P<items>[^\]]*)\]\s*(?P<unit>.*?)\s*$", raw)
        if not m:
            raise ValueError(f"expected a list of values, got {raw!r}")
        items: list[Any] = [s.strip() for s in m["items"].split(",") if s.strip()]
        unit = m["unit"] or unit
    elif isinstance(raw, list):
        items = raw
    else:
        raise ValueError(f"expected a list of values, got {schema._describe(raw)}")
    if not items:
        raise ValueError("the list of values is empty")
    if len(items) > 10_000:
        raise ValueError("more than 10,000 values")
    out = []
    for it in items:
        if isinstance(it, bool) or not isinstance(it, (str, int, float)):
            raise ValueError(f"a value must be a quantity such as '0.1 mV/s', got {schema._describe(it)}")
        text = str(it).strip()
        if unit and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
            text = f"{text} {unit}"
        out.append(text)
    return out


# ---- the primitive steps ---------------------------------------------------------------------------


def _rest(c: Compiler, item: schema.RestStep | schema.OCVStep, path: tuple) -> None:
    kind = "ocv" if isinstance(item, schema.OCVStep) else "rest"
    s: schema.RestSettings = getattr(item, kind)
    sp = (*path, kind)
    limits, rec, name = c.common(item, path)
    c.check_technique("rest", sp)
    window = c.positive(s.dv_dt_window, "time", (*sp, "dv_dt_window"), "dv_dt_window") \
        if s.dv_dt_window is not None else DEFAULT_DV_DT_WINDOW
    index = len(c.out)
    ends, gotos = c.ends(s.for_, s.until, sp, StepContext("rest", 0, c.ctx, window))
    if not ends:
        raise c.fail(sp, "step can never end: give it 'for: 6 h' and/or 'until: 1 mV/h'")
    c.check_ends(ends, limits, sp, 0)
    c.emit(Rest(step_id=c.step_id, name=name or f"{kind} " + ", ".join(e.label for e in ends), ends=tuple(ends),
                record=rec, limits=limits, technique=kind, source_line=c.line(path)))  # type: ignore[arg-type]
    c.add_gotos(index, gotos)


def _current(c: Compiler, item: schema.Common, path: tuple) -> None:
    kind = next(k for k in ("charge", "discharge", "cc") if isinstance(item, _CURRENT_KINDS[k]))
    s: schema.CurrentSettings = getattr(item, kind)
    sp = (*path, kind)
    limits, rec, name = c.common(item, path)
    c.check_technique("current", sp)
    current = c.q(s.current, "current", (*sp, "current"))
    if kind == "charge":
        current = abs(current)
    elif kind == "discharge":
        current = -abs(current)
    c.check_current(current, limits, (*sp, "current"))
    direction = 1 if current > 0 else -1
    index = len(c.out)
    ends, gotos = c.ends(s.for_, s.until, sp, StepContext("current", direction, c.ctx))
    if not ends:
        raise c.fail(sp, "step can never end: add 'until: <voltage>' (or a capacity) and/or 'for: <time>'")
    c.check_ends(ends, limits, sp, direction)
    label = name or f"{'charge' if direction > 0 else 'discharge'} at {c.subst(s.current, sp)} " + \
        " or ".join(e.label for e in ends)
    c.emit(ConstantCurrent(step_id=c.step_id, name=label, ends=tuple(ends), record=rec, limits=limits,
                           direction=direction, technique="gcd", current=current, source_line=c.line(path)))
    c.add_gotos(index, gotos)


def _hold(c: Compiler, item: schema.HoldStep, path: tuple) -> None:
    s = item.hold
    sp = (*path, "hold")
    limits, rec, name = c.common(item, path)
    c.check_technique("voltage", sp)
    v = c.q(s.voltage, "voltage", (*sp, "voltage"))
    c.check_voltage(v, limits, (*sp, "voltage"), "the hold voltage ")
    ilim = limits.current_max
    if s.current_limit is not None:
        ilim = min(ilim, abs(c.positive(s.current_limit, "current", (*sp, "current_limit"), "current_limit")))
    if c.caps is not None:
        ilim = min(ilim, c.caps.current_max)
    index = len(c.out)
    ends, gotos = c.ends(s.for_, s.until, sp, StepContext("hold", 0, c.ctx))
    if not ends:
        raise c.fail(sp, "step can never end: add 'until: <current>' (e.g. C/50) and/or 'for: <time>'")
    c.emit(ConstantVoltage(step_id=c.step_id, name=name or f"hold at {c.subst(s.voltage, sp)} "
                           + " or ".join(e.label for e in ends), ends=tuple(ends), record=rec, limits=limits,
                           technique="gcd", voltage=v, current_limit=ilim, source_line=c.line(path)))
    c.add_gotos(index, gotos)


def _cccv(c: Compiler, item: schema.CCCVStep, path: tuple) -> None:
    s = item.cccv
    sp = (*path, "cccv")
    limits, rec, name = c.common(item, path)
    c.check_technique("current", sp)
    c.check_technique("voltage", sp)
    current = c.q(s.current, "current", (*sp, "current"))
    c.check_current(current, limits, (*sp, "current"))
    direction = 1 if current > 0 else -1
    v = c.q(s.voltage, "voltage", (*sp, "voltage"))
    c.check_voltage(v, limits, (*sp, "voltage"), "the CV voltage ")
    cc_end = End("voltage", ">=" if direction > 0 else "<=", v, label=f"until {c.subst(s.voltage, sp)}")
    index = len(c.out)
    hold_ends, gotos = c.ends(None, s.until, sp, StepContext("hold", 0, c.ctx))
    if s.hold_for is not None:
        t = c.positive(s.hold_for, "time", (*sp, "hold_for"), "hold_for")
        hold_ends.append(End("step_time", ">=", t, label=f"for {c.subst(s.hold_for, sp)}"))
    if not hold_ends:
        raise c.fail(sp, "the hold of a cccv step can never end: add 'until: C/50' and/or 'hold_for: 2 h'")
    base = name or f"cccv {c.subst(s.current, sp)} to {c.subst(s.voltage, sp)}"
    c.emit(ConstantCurrent(step_id=c.step_id, name=f"{base}: CC", ends=(cc_end,),
                           record=rec, limits=limits, direction=direction, technique="cccv",
                           tags=(("role", "cc"),), current=current, source_line=c.line(path)))
    c.emit(ConstantVoltage(step_id=c.step_id, name=f"{base}: CV hold", ends=tuple(hold_ends), record=rec,
                           limits=limits, direction=direction, technique="cccv", tags=(("role", "cv"),),
                           voltage=v, current_limit=min(limits.current_max, c.caps.current_max if c.caps else math.inf),
                           source_line=c.line(path)))
    c.add_gotos(index + 1, gotos)


def _sweep(c: Compiler, item: schema.SweepStep, path: tuple) -> None:
    s = item.cv
    sp = (*path, "cv")
    limits, rec, name = c.common(item, path)
    c.check_technique("sweep", sp)
    vertices = [c.q(v, "voltage", (*sp, "vertices", i)) for i, v in enumerate(s.vertices)]
    stext = None if s.start is None else c.subst(s.start, (*sp, "start"))
    from_ocv = isinstance(stext, str) and stext.strip().lower() in OCV_WORDS
    if from_ocv:
        # the potential measured last when the step starts: something must have been measured
        if not any(not isinstance(ins, (LoopStart, LoopEnd)) for ins in c.out):
            raise c.fail((*sp, "start"), "a sweep from the open-circuit voltage needs a step before it "
                         "(a rest or ocv step): it starts at the potential measured last")
        start = math.nan
    elif s.start is not None:
        start = c.q(s.start, "voltage", (*sp, "start"))
        c.check_voltage(start, limits, (*sp, "start"), "the sweep start ")
    else:
        if len(vertices) < 2:
            raise c.fail((*sp, "vertices"), "give two vertices, or a start and one vertex")
        start, vertices = vertices[-1], vertices[:-1]
        c.check_voltage(start, limits, (*sp, "vertices", len(s.vertices) - 1), "the sweep vertex ")
    for i, v in enumerate(vertices):
        c.check_voltage(v, limits, (*sp, "vertices", i), "the sweep vertex ")
    rate = c.positive(s.rate, "scan_rate", (*sp, "rate"), "the scan rate")
    if c.caps is not None:
        lo, hi = c.caps.scan_rate_range
        if not lo <= rate <= hi:
            raise c.fail((*sp, "rate"), f"{units.fmt(rate, 'scan_rate')} is beyond the instrument {c.caps.model} "
                         f"({units.fmt(lo, 'scan_rate')} to {units.fmt(hi, 'scan_rate')})")
    if len(vertices) == 1 and not s.end_at_start and s.cycles > 1:
        raise c.fail((*sp, "cycles"), "a sweep to one vertex without the way back runs once: set cycles: 1, "
                     "or end_at_start: true")
    points = ["OCV" if from_ocv else _volts(start), *(_volts(v) for v in vertices)]
    step = Sweep(step_id=c.step_id, name=name or f"CV {', '.join(points)} "
                 f"at {units.fmt(rate, 'scan_rate')}, {s.cycles} cycle{'s' if s.cycles > 1 else ''}",
                 record=rec, limits=limits, technique="cv", start=start, vertices=tuple(vertices),
                 scan_rate=rate, cycles=s.cycles, end_at_start=s.end_at_start, from_ocv=from_ocv,
                 source_line=c.line(path))
    if step.duration <= 0 and not (from_ocv and len(vertices) == 1):
        raise c.fail(sp, "the sweep does not move: the vertices equal the start")
    if step.duration > limits.step_duration_max:
        raise c.fail(sp, f"the sweep takes {units.fmt(step.duration, 'time')}, longer than the step duration "
                     f"limit {units.fmt(limits.step_duration_max, 'time')}")
    c.emit(step)


def _volts(v: float) -> str:
    return "0 V" if v == 0 else units.fmt(v, "voltage")


def _eis(c: Compiler, item: schema.EISStep, path: tuple) -> None:
    s = item.eis
    sp = (*path, "eis")
    limits, rec, name = c.common(item, path)
    if s.acquisition == "waveform" and c.caps is not None and "impedance_waveform" in c.caps.techniques:
        pass  # an instrument that records the waveform without an analyser (an SMU): checked in _waveform
    elif c.caps is not None and "impedance" not in c.caps.techniques and "impedance_waveform" in c.caps.techniques:
        raise c.fail(sp, f"the instrument {c.caps.model} has no frequency-response analyser; use "
                     "'acquisition: waveform' (the low frequencies) or an impedance analyser")
    else:
        c.check_technique("impedance", sp)
    galvano = s.mode == "galvanostatic"
    amp_kind = "current" if galvano else "voltage"
    amplitude = abs(c.positive(s.amplitude, amp_kind, (*sp, "amplitude"), "the amplitude"))
    if galvano:
        c.check_current(amplitude, limits, (*sp, "amplitude"))
    bias: float | None = None
    btext = c.subst(s.bias, (*sp, "bias"))
    if not (isinstance(btext, str) and btext.strip().lower() in ("ocv", "ocp", "open circuit")):
        bias = c.q(btext, amp_kind, (*sp, "bias"))
        if galvano:
            if bias != 0:
                c.check_current(bias, limits, (*sp, "bias"))
        else:
            c.check_voltage(bias, limits, (*sp, "bias"), "the DC bias ")
    f0 = c.positive(s.from_, "frequency", (*sp, "from"), "the start frequency")
    f1 = c.positive(s.to, "frequency", (*sp, "to"), "the stop frequency")
    if f0 == f1:
        raise c.fail(sp, "the frequency range is empty ('from' equals 'to')")
    if c.caps is not None:
        lo, hi = c.caps.frequency_range
        for f, key in ((f0, "from"), (f1, "to")):
            if not lo <= f <= hi:
                raise c.fail((*sp, key), f"{units.fmt(f, 'frequency')} is beyond the instrument {c.caps.model} "
                             f"({units.fmt(lo, 'frequency')} to {units.fmt(hi, 'frequency')})")
    if abs(math.log10(f0 / f1)) * s.per_decade > 10_000:
        raise c.fail((*sp, "per_decade"), "more than 10,000 frequencies; lower per_decade")
    wave = _waveform(c, s, sp, f0, f1)
    c.emit(Impedance(step_id=c.step_id, name=name or f"EIS {units.fmt(f0, 'frequency')} to {units.fmt(f1, 'frequency')}, "
                     f"{units.fmt(amplitude, amp_kind)} at {'OCV' if bias is None else units.fmt(bias, amp_kind)}",
                     record=rec, limits=limits, mode=s.mode, freq_start=f0, freq_stop=f1,
                     points_per_decade=s.per_decade, amplitude=amplitude, bias=bias, source_line=c.line(path),
                     **wave))


MAX_WAVEFORM_SAMPLES = 10_000_000


def _waveform(c: Compiler, s: schema.EISSettings, sp: tuple, f0: float, f1: float) -> dict:
    """The waveform acquisition's settings, checked against the instrument; {} for a spectrum."""
    if s.acquisition != "waveform":
        for key in ("samples_per_period", "periods"):
            if getattr(s, key) is not None:
                raise c.fail((*sp, key), f"'{key}' applies only to 'acquisition: waveform'")
        return {}
    if c.caps is not None and "impedance_waveform" not in c.caps.techniques:
        raise c.fail((*sp, "acquisition"), f"the instrument {c.caps.model} cannot record the impedance waveform; "
                     "use 'acquisition: spectrum'")
    spp = 64 if s.samples_per_period is None else s.samples_per_period
    periods = 4 if s.periods is None else s.periods
    if spp < 8:
        raise c.fail((*sp, "samples_per_period"), f"{spp} samples per period cannot resolve the sine; give at least 8")
    if periods > 1000:
        raise c.fail((*sp, "periods"), f"{periods} periods per frequency; give at most 1000")
    f_hi = max(f0, f1)
    if c.caps is not None and c.caps.min_sample_period > 0 and 1.0 / (f_hi * spp) < c.caps.min_sample_period:
        top = 1.0 / (c.caps.min_sample_period * spp)
        raise c.fail(sp, f"{units.fmt(f_hi, 'frequency')} at {spp} samples per period needs a sample every "
                     f"{units.fmt(1.0 / (f_hi * spp), 'time')}; the instrument {c.caps.model} samples at most every "
                     f"{units.fmt(c.caps.min_sample_period, 'time')}: start at {units.fmt(top, 'frequency')} or below")
    n_freq = max(1, int(round(abs(math.log10(f0 / f1)) * s.per_decade))) + 1
    total = n_freq * (1 + periods) * spp
    if total > MAX_WAVEFORM_SAMPLES:
        raise c.fail(sp, f"the waveform would be {total:,} samples (more than {MAX_WAVEFORM_SAMPLES:,}); lower "
                     "samples_per_period, periods or per_decade")
    return {"acquisition": "waveform", "samples_per_period": spp, "periods": periods}


def _pulse_bound(c: Compiler, current: float, on_time: float) -> int:
    """A safety bound on the number of pulses: enough for twice the nominal capacity."""
    q = c.cell.nominal_capacity
    if q is None:
        return 1000
    return max(2, min(100_000, math.ceil(2.0 * q / (abs(current) * on_time)) + 2))


def _gitt(c: Compiler, item: schema.GITTStep, path: tuple) -> None:
    s = item.gitt
    sp = (*path, "gitt")
    limits, rec, name = c.common(item, path)
    c.check_technique("current", sp)
    c.check_technique("rest", sp)
    current = c.q(s.current, "current", (*sp, "current"))
    c.check_current(current, limits, (*sp, "current"))
    direction = 1 if current > 0 else -1
    pulse = c.positive(s.pulse, "time", (*sp, "pulse"), "the pulse time")
    vlimit = c.q(s.until, "voltage", (*sp, "until"))
    v_end = End("voltage", ">=" if direction > 0 else "<=", vlimit, label=f"until {c.subst(s.until, sp)}")
    c.check_ends([v_end], limits, (*sp, "until"), direction)
    rp = (*sp, "rest")
    window = c.positive(s.rest.dv_dt_window, "time", (*rp, "dv_dt_window"), "dv_dt_window") \
        if s.rest.dv_dt_window is not None else DEFAULT_DV_DT_WINDOW
    rest_ends, rest_gotos = c.ends(s.rest.for_, s.rest.until, rp, StepContext("rest", 0, c.ctx, window))
    if rest_gotos:
        raise c.fail(rp, "the rests of a GITT take no goto")
    if not rest_ends:
        raise c.fail(rp, "the GITT rest can never end: give it 'for: 30 min' and/or 'until: 1 mV/h'")
    at_most = s.at_most or _pulse_bound(c, current, pulse)
    base = name or f"GITT {c.subst(s.current, sp)} x {c.subst(s.pulse, sp)}"
    c.next_loop += 1
    loop_id = c.next_loop
    start = c.emit(LoopStart(loop_id, end=-1, at_most=at_most, name=f"{base} until {c.subst(s.until, sp)}"))
    pulse_index = c.emit(ConstantCurrent(
        step_id=c.step_id, name=f"{base}: pulse", ends=(v_end, End("step_time", ">=", pulse, label=f"for {c.subst(s.pulse, sp)}")),
        record=rec, limits=limits, direction=direction, technique="gitt", tags=(("role", "pulse"),),
        current=current, source_line=c.line(path)))
    relax = Rest(step_id=c.step_id, name=f"{base}: relax", ends=tuple(rest_ends), record=rec, limits=limits,
                 technique="gitt", tags=(("role", "relax"),), source_line=c.line(path))
    c.emit(relax)
    end = c.emit(LoopEnd(loop_id, start=start))
    final = c.emit(replace(relax, name=f"{base}: final relax"))
    c.out[start] = replace(c.out[start], end=end)
    pulse_step = c.out[pulse_index]
    c.out[pulse_index] = replace(pulse_step, ends=(replace(v_end, goto=final), pulse_step.ends[1]))


def _ici(c: Compiler, item: schema.ICIStep, path: tuple) -> None:
    s = item.ici
    sp = (*path, "ici")
    limits, rec, name = c.common(item, path)
    c.check_technique("current", sp)
    c.check_technique("rest", sp)
    current = c.q(s.current, "current", (*sp, "current"))
    c.check_current(current, limits, (*sp, "current"))
    direction = 1 if current > 0 else -1
    on = c.positive(s.interval, "time", (*sp, "interval"), "the interval")
    off = c.positive(s.interruption, "time", (*sp, "interruption"), "the interruption")
    vlimit = c.q(s.until, "voltage", (*sp, "until"))
    v_end = End("voltage", ">=" if direction > 0 else "<=", vlimit, label=f"until {c.subst(s.until, sp)}")
    c.check_ends([v_end], limits, (*sp, "until"), direction)
    at_most = s.at_most or _pulse_bound(c, current, on)
    base = name or f"ICI {c.subst(s.current, sp)}, {c.subst(s.interruption, sp)} off every {c.subst(s.interval, sp)}"
    c.next_loop += 1
    loop_id = c.next_loop
    start = c.emit(LoopStart(loop_id, end=-1, at_most=at_most, name=f"{base} until {c.subst(s.until, sp)}"))
    cc = c.emit(ConstantCurrent(
        step_id=c.step_id, name=f"{base}: current", ends=(v_end, End("step_time", ">=", on, label=f"for {c.subst(s.interval, sp)}")),
        record=rec, limits=limits, direction=direction, technique="ici", tags=(("role", "current"),),
        current=current, source_line=c.line(path)))
    c.emit(Rest(step_id=c.step_id, name=f"{base}: interruption", ends=(End("step_time", ">=", off, label=f"for {c.subst(s.interruption, sp)}"),),
                record=rec, limits=limits, technique="ici", tags=(("role", "interruption"),), source_line=c.line(path)))
    end = c.emit(LoopEnd(loop_id, start=start))
    c.out[start] = replace(c.out[start], end=end)
    step = c.out[cc]
    c.out[cc] = replace(step, ends=(replace(v_end, goto=end + 1), step.ends[1]))


def _temperature(c: Compiler, item: schema.TemperatureStep, path: tuple) -> None:
    s = item.temperature
    sp = (*path, "temperature")
    limits, rec, name = c.common(item, path)
    c.check_technique("temperature", sp)
    t = c.q(s.set, "temperature", (*sp, "set"))
    if not limits.temperature_min <= t <= limits.temperature_max:
        raise c.fail((*sp, "set"), f"{units.fmt(t, 'temperature')} is outside the safety temperature window "
                     f"[{units.fmt(limits.temperature_min, 'temperature')}, {units.fmt(limits.temperature_max, 'temperature')}]")
    if c.caps is not None and c.caps.temperature_range is not None:
        lo, hi = c.caps.temperature_range
        if not lo <= t <= hi:
            raise c.fail((*sp, "set"), f"{units.fmt(t, 'temperature')} is beyond the thermostat "
                         f"({units.fmt(lo, 'temperature')} to {units.fmt(hi, 'temperature')})")
    tol = c.positive(s.within, "temperature_difference", (*sp, "within"), "the tolerance")
    stable = c.q(s.stable_for, "time", (*sp, "stable_for"))
    if stable < 0:
        raise c.fail((*sp, "stable_for"), "stable_for must not be negative")
    timeout = c.positive(s.timeout, "time", (*sp, "timeout"), "the timeout")
    if timeout <= stable:
        raise c.fail((*sp, "timeout"), "the timeout must be longer than stable_for")
    c.emit(SetTemperature(step_id=c.step_id, name=name or f"temperature {units.fmt(t, 'temperature')}",
                          record=rec, limits=limits, temperature=t, tolerance=tol, stable_for=stable,
                          timeout=timeout, source_line=c.line(path)))


_CURRENT_KINDS = {"charge": schema.ChargeStep, "discharge": schema.DischargeStep, "cc": schema.CCStep}
_HANDLERS = {
    schema.RestStep: _rest, schema.OCVStep: _rest, schema.ChargeStep: _current, schema.DischargeStep: _current,
    schema.CCStep: _current, schema.HoldStep: _hold, schema.CCCVStep: _cccv, schema.SweepStep: _sweep,
    schema.EISStep: _eis, schema.GITTStep: _gitt, schema.ICIStep: _ici, schema.TemperatureStep: _temperature,
}


def compile_protocol(protocol: schema.Protocol, cell: Cell | None = None,
                     capabilities: Capabilities | None = None) -> Program:
    """Compile a loaded protocol for one cell (default: the protocol's own cell block) and, when
    known, an instrument's capability envelope. Raises ProtocolError with the file location."""
    if cell is None:
        cell = resolve_cell(protocol)
    return Compiler(protocol, cell, capabilities).compile()
