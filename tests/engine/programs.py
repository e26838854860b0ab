"""Hand-built Programs for engine tests (the compiler's output, written out)."""

from __future__ import annotations

from cyclerctl.program import (
    Cell,
    Condition,
    ConstantCurrent,
    ConstantVoltage,
    End,
    Impedance,
    Limits,
    LoopEnd,
    LoopStart,
    Program,
    Record,
    Rest,
)

CELL = Cell(name="rc-cell", active_mass=3.4e-6, nominal_specific_capacity=300 * 3.6e3, material="hard carbon")
SAFETY = Limits(voltage_min=-0.05, voltage_max=3.0, current_max=5e-3)
REC = Record(every=10.0)


def cc(step_id, current, until_v, *, goto=None, limits=SAFETY, every=10.0, name=None):
    op = "<=" if current < 0 else ">="
    return ConstantCurrent(step_id=step_id, name=name or f"CC {current*1e3:g} mA until {until_v} V",
                           current=current, ends=(End("voltage", op, until_v, goto=goto, label=f"until {until_v} V"),),
                           limits=limits, record=Record(every=every), direction=1 if current > 0 else -1)


def rest(step_id, seconds, *, limits=SAFETY, every=10.0):
    return Rest(step_id=step_id, name=f"Rest {seconds} s", ends=(End("step_time", ">=", seconds),),
                limits=limits, record=Record(every=every))


def cycling(n_cycles=3, current=1e-3, *, name="rc cycling", v_lo=0.0, v_hi=1.2):
    """Rest, then n cycles of discharge/charge (a repeat loop)."""
    ins = (
        rest(0, 60.0),
        LoopStart(loop_id=0, end=4, count=n_cycles, name="cycles"),
        cc(1, -current, v_lo),
        cc(2, +current, v_hi),
        LoopEnd(loop_id=0, start=1),
    )
    return Program(name=name, instructions=ins, cell=CELL, safety=SAFETY, record=REC)


def until_program(at_most=20, threshold=3):
    """A loop until cycle_count >= threshold (metric from the engine) bounded by at_most."""
    ins = (
        LoopStart(loop_id=0, end=3, until=Condition("cycle_count", ">=", threshold, text="cycle_count >= 3"),
                  at_most=at_most),
        cc(1, -1e-3, 0.0),
        cc(2, 1e-3, 1.2),
        LoopEnd(loop_id=0, start=0),
    )
    return Program(name="until", instructions=ins, cell=CELL, safety=SAFETY, record=REC)


def nested_program(outer=2, inner=3):
    ins = (
        LoopStart(loop_id=0, end=7, count=outer),
        rest(0, 30.0),
        LoopStart(loop_id=1, end=5, count=inner),
        cc(1, -2e-3, 0.2),
        cc(2, 2e-3, 1.0),
        LoopEnd(loop_id=1, start=2),
        Impedance(step_id=3, name="EIS", freq_start=1e4, freq_stop=1.0, points_per_decade=2, limits=SAFETY),
        LoopEnd(loop_id=0, start=0),
    )
    return Program(name="nested", instructions=ins, cell=CELL, safety=SAFETY, record=REC)


def goto_program():
    """Step 0 discharges; its voltage end jumps over step 1 to step 2 (a CV hold)."""
    ins = (
        cc(0, -1e-3, 0.3, goto=2),
        rest(1, 1000.0),
        ConstantVoltage(step_id=2, name="hold 0.3 V", voltage=0.3, ends=(End("abs_current", "<=", 1e-4),),
                        limits=SAFETY, record=REC, direction=-1),
        rest(3, 20.0),
    )
    return Program(name="goto", instructions=ins, cell=CELL, safety=SAFETY, record=REC)
