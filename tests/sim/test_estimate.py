"""The run estimate behind `cyclerctl plan`: engine semantics, loop extrapolation."""

from __future__ import annotations

import pytest

from cyclerctl.program import (
    Cell,
    Condition,
    ConstantCurrent,
    End,
    Limits,
    LoopEnd,
    LoopStart,
    Program,
    Record,
    Rest,
)
from cyclerctl.sim import estimate
from cyclerctl.sim.cycling import cycle
from cyclerctl.sim.model import CellModel

CELL = Cell(active_mass=3.4e-6, area=1.131e-4, nominal_specific_capacity=300 * 3600.0)
CURRENT = 0.3e-3 * 3.4  # 300 mA/g


def program(count=None, until=None, at_most=None, goto_skip=False):
    rec = Record(every=30.0)
    body = [
        ConstantCurrent(step_id=1, name="d", current=-CURRENT, direction=-1, record=rec,
                        ends=(End("voltage", "<=", 0.0),)),
        ConstantCurrent(step_id=2, name="c", current=CURRENT, direction=1, record=rec,
                        ends=(End("voltage", ">=", 2.5),)),
    ]
    ins = [Rest(step_id=0, name="rest", record=rec,
                ends=(End("step_time", ">=", 3600.0, goto=5 if goto_skip else None),)),
           LoopStart(loop_id=1, end=4, count=count, until=until, at_most=at_most),
           *body, LoopEnd(loop_id=1, start=1),
           Rest(step_id=3, name="end", record=rec, ends=(End("step_time", ">=", 600.0),))]
    return Program(name="t", instructions=tuple(ins), cell=CELL, safety=Limits())


def direct(n_cycles):
    m = CellModel("hard_carbon", CELL)
    t = 3600.0 + 600.0
    samples = 121 + 21
    for _ in range(n_cycles):
        d, c = cycle(m, CURRENT, CURRENT, (0.0, 2.5), every=30.0)
        t += d.duration + c.duration
        samples += d.samples + c.samples
    return t, samples


def test_short_program_is_simulated_exactly():
    r = estimate(program(count=5), "hard_carbon")
    t, n = direct(5)
    assert r["duration_s"] == pytest.approx(t, rel=1e-9)
    assert r["samples"] == n
    assert r["bytes"] == 100 * n
    assert not r["extrapolated"] and r["cycles"] == 5


def test_long_loop_is_extrapolated_from_its_first_iterations():
    r = estimate(program(count=20), "hard_carbon")
    t, n = direct(20)
    assert r["extrapolated"]
    assert r["cycles"] == 20
    # the capacity still fades after the warm-up iterations, so later cycles are a little shorter
    assert r["duration_s"] == pytest.approx(t, rel=0.05)
    assert r["samples"] == pytest.approx(n, rel=0.05)
    big = estimate(program(count=12_000), "sn_hc")
    assert big["cycles"] == 12_000 and big["samples"] > 1_000_000


def test_until_condition_and_goto():
    # coulombic efficiency reaches 99 % after the first cycles
    r = estimate(program(until=Condition("coulombic_efficiency", ">=", 0.99), at_most=50), "hard_carbon")
    assert 2 <= r["cycles"] < 20 and not r["extrapolated"]
    # the rest's end jumps past the loop
    skip = estimate(program(count=5, goto_skip=True), "hard_carbon")
    assert skip["cycles"] == 1 and skip["duration_s"] == pytest.approx(4200.0)
