"""End conditions of steps and loop conditions on live metrics, from text to the Program's types.

Step ends (the step stops as soon as one holds):
    "0.001 V"           a voltage: reached in the step's direction (discharge: V <= 0.001 V)
    "2 h"               a time in the step: step_time >= 2 h
    "150 mAh/g"         charge passed in the step: |Q| >= 150 mAh/g x active mass
    "1 mV/h"            a voltage slope: |dV/dt| <= 1 mV/h (rest until relaxed)
    "C/50", "5 mA/g"    in a hold: |I| <= the value (CV cutoff)
    "voltage >= 1.2 V"  any quantity with an explicit comparison: voltage, current, |I|,
                        capacity, time, dV/dt, temperature

Loop conditions (checked after each pass through the loop body):
    "coulombic_efficiency >= 99.5 %"       "discharge_capacity < 80 % of cycle 20"
    "specific_charge_capacity < 150 mAh/g" "capacity_retention < 80 %"   "cycle_count >= 100"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .. import units
from ..errors import UnitError
from ..program import Condition, End

_OPS = {"<": "<=", "<=": "<=", "=<": "<=", "≤": "<=", ">": ">=", ">=": ">=", "=>": ">=", "≥": ">="}
_EXPLICIT = re.compile(r"^\s*(?P<name>\|?[A-Za-z_/ ]+?\|?)\s*(?P<op><=|>=|=<|=>|<|>|≤|≥)\s*(?P<value>.+?)\s*$")

# name -> (units kind, End quantity)
_NAMES: dict[str, tuple[str, str]] = {
    "voltage": ("voltage", "voltage"), "v": ("voltage", "voltage"),
    "current": ("current", "current"), "i": ("current", "current"),
    "|i|": ("current", "abs_current"), "abs_current": ("current", "abs_current"),
    "|current|": ("current", "abs_current"),
    "capacity": ("capacity", "abs_step_charge"), "charge": ("capacity", "abs_step_charge"),
    "|q|": ("capacity", "abs_step_charge"),
    "time": ("time", "step_time"), "step_time": ("time", "step_time"),
    "dv/dt": ("voltage_slope", "abs_dv_dt"), "|dv/dt|": ("voltage_slope", "abs_dv_dt"),
    "temperature": ("temperature", "temperature"),
}

# the kinds a bare quantity may be, in the order they are tried
_IMPLICIT_KINDS = ("voltage", "time", "capacity", "voltage_slope", "current", "temperature")
_PROBE = units.Context(active_mass=1.0, area=1.0, nominal_capacity=1.0)


parse_quantity = lru_cache(maxsize=8192)(units.parse)
"""units.parse, memoised: protocols repeat the same few quantities many times."""


class ConditionError(ValueError):
    """A condition that cannot be read; the compiler adds the file location."""


@lru_cache(maxsize=4096)
def quantity_kind(text: str | float) -> str | None:
    """The kind of a quantity ("0.1 V" -> "voltage", "C/10" -> "current"), ignoring the cell."""
    for kind in _IMPLICIT_KINDS:
        try:
            parse_quantity(text, kind, _PROBE)
            return kind
        except UnitError:
            continue
    return None


@dataclass(frozen=True, slots=True)
class StepContext:
    """What an end condition's meaning depends on: the step's kind and direction (-1/0/+1)."""

    kind: str  # "rest", "current", "hold", "pulse"
    direction: int
    ctx: units.Context
    dv_dt_window: float = 600.0


def parse_end(text: str | float, step: StepContext, goto_label: str = "") -> End:
    """One end condition. Raises ConditionError or UnitError with a message a person can act on."""
    label = f"until {text}"
    if isinstance(text, str):
        m = _EXPLICIT.match(text)
        if m:
            name = m["name"].strip().lower().replace(" ", "")
            if name not in _NAMES:
                raise ConditionError(
                    f"unknown quantity {m['name'].strip()!r} in {text!r} "
                    f"(known: voltage, current, |I|, capacity, time, dV/dt, temperature)")
            kind, quantity = _NAMES[name]
            value = parse_quantity(m["value"], kind, step.ctx)
            if quantity in ("abs_current", "abs_step_charge", "abs_dv_dt"):
                value = abs(value)
            window = step.dv_dt_window if quantity == "abs_dv_dt" else 0.0
            return End(quantity, _OPS[m["op"]], value, label=label, window=window)  # type: ignore[arg-type]
    if isinstance(text, (int, float)) or re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", text):
        raise ConditionError(f"the end condition {text!r} has no unit: write e.g. '{text} V' or '{text} h'")
    kind = quantity_kind(text)
    if kind is None:
        raise ConditionError(
            f"cannot read the end condition {text!r}: expected a voltage ('0.001 V'), time ('2 h'), "
            f"capacity ('150 mAh/g'), dV/dt ('1 mV/h') or a comparison ('voltage >= 1 V')")
    value = parse_quantity(text, kind, step.ctx)
    if kind == "voltage":
        if step.kind == "hold":
            raise ConditionError(f"a hold keeps the voltage fixed, so it never ends at {text!r}; "
                                 "end it on a current ('until: C/50') or a time")
        if step.direction == 0:
            raise ConditionError(f"a voltage end on a step without current needs a comparison: "
                                 f"write 'voltage >= {text}' or 'voltage <= {text}'")
        return End("voltage", "<=" if step.direction < 0 else ">=", value, label=label)
    if kind == "time":
        if value <= 0:
            raise ConditionError(f"a step time must be positive, got {text!r}")
        return End("step_time", ">=", value, label=label)
    if kind == "capacity":
        if value == 0:
            raise ConditionError(f"a capacity end of zero ends the step at once: {text!r}")
        return End("abs_step_charge", ">=", abs(value), label=label)
    if kind == "voltage_slope":
        return End("abs_dv_dt", "<=", abs(value), label=label, window=step.dv_dt_window)
    if kind == "current":
        if step.kind != "hold":
            raise ConditionError(f"a current end needs a comparison here: write '|I| <= {text}'")
        return End("abs_current", "<=", abs(value), label=label)
    raise ConditionError(f"a temperature end needs a comparison: write 'temperature >= {text}'")


_LOOP = re.compile(
    r"^\s*(?P<name>[A-Za-z_ ]+?)\s*(?P<op><=|>=|==|!=|=<|=>|<|>|≤|≥)\s*(?P<value>.+?)"
    r"(?:\s+of\s+cycle\s+(?P<ref>\d+))?\s*$", re.I)
_METRICS = {
    "coulombic_efficiency": "coulombic_efficiency", "ce": "coulombic_efficiency",
    "discharge_capacity": "discharge_capacity", "charge_capacity": "charge_capacity",
    "specific_discharge_capacity": "specific_discharge_capacity",
    "specific_charge_capacity": "specific_charge_capacity",
    "capacity_retention": "capacity_retention", "retention": "capacity_retention",
    "cycle_count": "cycle_count", "cycle": "cycle_count",
}


def parse_loop_condition(text: str, ctx: units.Context, retention_reference: int | None) -> Condition:
    """A loop condition on a live metric of the last completed cycle."""
    m = _LOOP.match(text)
    if not m:
        raise ConditionError(f"cannot read the loop condition {text!r}; write e.g. "
                             "'coulombic_efficiency >= 99.5 %' or 'discharge_capacity < 80 % of cycle 20'")
    raw = m["name"].strip().lower().replace(" ", "_")
    if raw not in _METRICS:
        raise ConditionError(f"unknown metric {m['name'].strip()!r} in {text!r} (known: {', '.join(sorted(set(_METRICS.values())))})")
    metric = _METRICS[raw]
    op = {"=<": "<=", "=>": ">=", "≤": "<=", "≥": ">="}.get(m["op"], m["op"])
    value_text = m["value"]
    ref = int(m["ref"]) if m["ref"] else None
    if metric == "cycle_count":
        try:
            value = float(int(value_text))
        except ValueError:
            raise ConditionError(f"cycle_count compares with a whole number, got {value_text!r}") from None
        return Condition("cycle_count", op, value, text=text)  # type: ignore[arg-type]
    if metric in ("discharge_capacity", "charge_capacity") and (ref is not None or "%" in value_text):
        metric = "capacity_retention"
    if metric in ("coulombic_efficiency", "capacity_retention"):
        value = parse_quantity(value_text, "fraction")
        if metric == "capacity_retention":
            ref = ref if ref is not None else retention_reference
            if ref is None:
                raise ConditionError(f"{text!r} needs a reference cycle: write '... of cycle 20' "
                                     "or set retention_reference_cycle")
            if ref < 1:
                raise ConditionError(f"the reference cycle must be at least 1, got {ref}")
        return Condition(metric, op, value, reference_cycle=ref, text=text)  # type: ignore[arg-type]
    if metric in ("discharge_capacity", "charge_capacity"):
        kind = quantity_kind(value_text)
        if kind != "capacity":
            raise UnitError(f"expected a capacity, got {value_text!r}")
        if re.search(r"/\s*(g|mg|kg)\b", value_text):
            spec = parse_quantity(value_text, "specific_capacity")
            return Condition(f"specific_{metric}", op, spec, text=text)  # type: ignore[arg-type]
        return Condition(metric, op, parse_quantity(value_text, "capacity", ctx), text=text)  # type: ignore[arg-type]
    # specific_*_capacity
    return Condition(metric, op, parse_quantity(value_text, "specific_capacity"), text=text)  # type: ignore[arg-type]
