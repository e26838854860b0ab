"""A compiled Program as rows a person can read: what runs, at which setpoint (in the user's units and
in SI), how each step ends and where it goes next."""

from __future__ import annotations

import math

from rich.table import Table

from .. import units
from ..program import (
    Condition,
    ConstantCurrent,
    ConstantVoltage,
    End,
    Impedance,
    LoopEnd,
    LoopStart,
    Program,
    Rest,
    SetTemperature,
    Sweep,
)

_QTY_KIND = {"voltage": "voltage", "current": "current", "abs_current": "current", "abs_step_charge": "capacity",
             "step_time": "time", "abs_dv_dt": "voltage_slope", "temperature": "temperature"}
_QTY_NAME = {"voltage": "V", "current": "I", "abs_current": "|I|", "abs_step_charge": "|Q|", "step_time": "t",
             "abs_dv_dt": "|dV/dt|", "temperature": "T"}


def _current_text(program: Program, current: float) -> tuple[str, str]:
    user = units.fmt(current, "current")
    mass = program.cell.active_mass
    if mass:
        user += f" ({current / mass:.4g} mA/g)"  # A/kg == mA/g
    return user, f"{current:.6g} A"


def _goto_text(program: Program, goto: int | None) -> str:
    if goto is None:
        return "next"
    if goto >= len(program.instructions):
        return "end"
    names = [name for name, index in program.labels if index == goto]
    return f"#{goto}" + (f" ({names[0]})" if names else "")


def _fmt(value: float, kind: str) -> str:
    if value == 0 and kind in ("voltage", "current", "capacity"):
        return {"voltage": "0 V", "current": "0 A", "capacity": "0 mAh"}[kind]
    return units.fmt(value, kind)


def end_text(program: Program, end: End) -> str:
    kind = _QTY_KIND[end.quantity]
    value = _fmt(end.value, kind)
    if end.quantity == "abs_step_charge" and program.cell.active_mass:
        value += f" ({end.value / program.cell.active_mass / 3600:.4g} mAh/g)"
    return f"{_QTY_NAME[end.quantity]} {end.op} {value} -> {_goto_text(program, end.goto)}"


def condition_text(cond: Condition) -> str:
    if cond.metric in ("coulombic_efficiency", "capacity_retention"):
        value = units.fmt(cond.value, "fraction")
    elif cond.metric in ("discharge_capacity", "charge_capacity"):
        value = units.fmt(cond.value, "capacity")
    elif cond.metric.startswith("specific_"):
        value = units.fmt(cond.value, "specific_capacity")
    else:
        value = f"{cond.value:g}"
    ref = f" of cycle {cond.reference_cycle}" if cond.reference_cycle else ""
    return f"{cond.metric} {cond.op} {value}{ref}"


def rows(program: Program) -> list[dict[str, str]]:
    """One row per instruction: index, step (BDF step id), kind, name, setpoint, si, ends."""
    out: list[dict[str, str]] = []
    depth = 0
    for i, ins in enumerate(program.instructions):
        row = {"index": str(i), "step": "", "kind": "", "name": "", "setpoint": "", "si": "", "ends": ""}
        if isinstance(ins, LoopStart):
            row["kind"] = "LOOP"
            row["name"] = "  " * depth + (ins.name or f"loop {ins.loop_id}")
            if ins.count is not None:
                row["setpoint"] = f"repeat {ins.count}x"
            elif ins.until is not None:
                row["setpoint"] = f"until {condition_text(ins.until)}, at most {ins.at_most}x"
            else:
                row["setpoint"] = f"at most {ins.at_most}x"
            row["ends"] = f"body #{i + 1}..#{ins.end - 1}, then #{ins.end + 1}"
            depth += 1
            out.append(row)
            continue
        if isinstance(ins, LoopEnd):
            depth = max(0, depth - 1)
            row["kind"] = "END LOOP"
            row["name"] = "  " * depth + "end of loop"
            row["ends"] = f"again from #{ins.start + 1}"
            out.append(row)
            continue
        row["step"] = str(ins.step_id)
        row["kind"] = ins.step_type + ("" if ins.technique in ("gcd", "rest", "cv", "eis", "temperature")
                                       else f" ({ins.technique})")
        row["name"] = "  " * depth + ins.name
        if isinstance(ins, ConstantCurrent):
            row["setpoint"], row["si"] = _current_text(program, ins.current)
        elif isinstance(ins, ConstantVoltage):
            row["setpoint"], row["si"] = units.fmt(ins.voltage, "voltage"), f"{ins.voltage:.6g} V"
        elif isinstance(ins, Sweep):
            first = _fmt(ins.start, "voltage") if ins.resolved else "OCV"
            pts = [first, *(_fmt(v, "voltage") for v in ins.vertices)] + ([first] if ins.end_at_start else [])
            row["setpoint"] = (" -> ".join(pts)
                               + f" at {units.fmt(ins.scan_rate, 'scan_rate')}, {ins.cycles}x")
            row["si"] = (f"{ins.scan_rate:.6g} V/s, {'' if ins.resolved else 'at least '}"
                         f"{units.fmt(ins.duration, 'time')}")
        elif isinstance(ins, Impedance):
            kind = "voltage" if ins.mode == "potentiostatic" else "current"
            bias = "OCV" if ins.bias is None else units.fmt(ins.bias, kind)
            row["setpoint"] = (f"{units.fmt(ins.freq_start, 'frequency')} -> {units.fmt(ins.freq_stop, 'frequency')}, "
                               f"{units.fmt(ins.amplitude, kind)} at {bias}")
            row["si"] = f"{len(ins.frequencies())} frequencies"
            if ins.acquisition == "waveform":
                row["si"] += f", waveform {ins.samples_per_period}/period x (1 + {ins.periods}) periods"
        elif isinstance(ins, SetTemperature):
            row["setpoint"] = f"{units.fmt(ins.temperature, 'temperature')} ±{units.fmt(ins.tolerance, 'temperature_difference')}"
            row["si"] = f"{ins.temperature:.5g} K"
        elif isinstance(ins, Rest):
            row["setpoint"] = "open circuit"
            row["si"] = "0 A"
        ends = [end_text(program, e) for e in ins.ends]
        if isinstance(ins, (Sweep, Impedance)):
            ends.append("when done -> next")
        if isinstance(ins, SetTemperature):
            ends.append(f"stable {units.fmt(ins.stable_for, 'time')} -> next (timeout {units.fmt(ins.timeout, 'time')})")
        if math.isfinite(ins.limits.step_duration_max):
            ends.append(f"(safety: at most {units.fmt(ins.limits.step_duration_max, 'time')})")
        row["ends"] = "; ".join(ends)
        out.append(row)
    return out


def describe(program: Program) -> Table:
    """The program as a rich Table (used by `cyclerctl plan` and `cyclerctl run`)."""
    table = Table(title=program.name, show_lines=False, expand=False)
    for col, style in (("#", "dim"), ("step", "dim"), ("kind", "cyan"), ("what", ""), ("setpoint", "green"),
                       ("SI", "dim"), ("ends -> goes to", "")):
        table.add_column(col, style=style, overflow="fold")
    for r in rows(program):
        table.add_row(r["index"], r["step"], r["kind"], r["name"], r["setpoint"], r["si"], r["ends"])
    return table


def summary(program: Program) -> list[str]:
    """A few lines about the whole program: cell, safety window, record rule, size."""
    c, s, r = program.cell, program.safety, program.record
    cell = [f"cell: {c.name}"]
    if c.material:
        cell.append(c.material)
    if c.active_mass:
        cell.append(f"active mass {units.fmt(c.active_mass, 'mass')}")
    if c.nominal_specific_capacity:
        cell.append(f"1C = {c.nominal_specific_capacity / 3600:.4g} mA/g")
        if c.one_c_current:
            cell.append(f"= {units.fmt(c.one_c_current, 'current')}")
    window = (f"safety: {units.fmt(s.voltage_min, 'voltage')} to {units.fmt(s.voltage_max, 'voltage')}, "
              f"|I| <= {units.fmt(s.current_max, 'current')}")
    if math.isfinite(s.temperature_min) or math.isfinite(s.temperature_max):
        window += f", {units.fmt(s.temperature_min, 'temperature')} to {units.fmt(s.temperature_max, 'temperature')}"
    rec = [f"every {units.fmt(r.every, 'time')}"] if r.every else []
    if r.voltage_change:
        rec.append(f"dV {units.fmt(r.voltage_change, 'voltage')}")
    if r.current_change:
        rec.append(f"dI {units.fmt(r.current_change, 'current')}")
    return [", ".join(cell), window, "record: " + (", ".join(rec) or "first and last sample of each step"),
            f"cycle starts on: {program.cycle_starts_on}; {len(program.steps())} primitive steps, "
            f"{len(program.instructions)} instructions"]
