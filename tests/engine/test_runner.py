"""The step machine on the RC stand-in channel: loops, gotos, cycle counting, loop conditions,
safety trips, instrument faults."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import assert_contiguous, journal, kinds, session
from programs import CELL, SAFETY, cc, cycling, goto_program, nested_program, rest, until_program

from cyclerctl.program import Condition, Limits, LoopEnd, LoopStart, Program, Record, Sweep


async def test_cycling_counts_cycles_and_steps(run_dir):
    s = session(run_dir, [cycling(3)])
    assert await s.execute() == {"ch1": "done"}
    samples, events, _, _ = journal(run_dir)
    assert_contiguous(samples, events)
    assert kinds(events)[0] == "run_start" and kinds(events)[-1] == "run_end"
    assert events[-1].data == {"status": "complete"}
    assert [e.data["cycle_count"] for e in events if e.kind == "cycle_start"] == [2, 3]
    starts = [e for e in events if e.kind == "step_start"]
    assert [e.step_count for e in starts] == list(range(1, 8))
    assert [e.data["step_id"] for e in starts] == [0, 1, 2, 1, 2, 1, 2]
    # cycle 1 = rest + first discharge/charge; the discharge of cycle 2 opens cycle 2
    assert [e.cycle_count for e in starts] == [1, 1, 1, 2, 2, 3, 3]
    assert set(np.unique(samples["cycle_count"])) == {1, 2, 3}
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete"
    # the RC cell is lossless: every discharge passes the same charge (x goes 0 -> 1)
    ends = [e for e in events if e.kind == "step_end"]
    assert all(e.data["reason"] == "end" for e in ends)


async def test_nested_loops(run_dir):
    s = session(run_dir, [nested_program(outer=2, inner=3)])
    await s.execute()
    samples, events, _, _ = journal(run_dir)
    names = [e.data["name"] for e in events if e.kind == "step_start"]
    one = ["Rest 30.0 s"] + ["CC -2 mA until 0.2 V", "CC 2 mA until 1.0 V"] * 3 + ["EIS"]
    assert names == one * 2
    eis = np.isfinite(samples["frequency_hertz"])
    assert eis.sum() == 2 * 9 and np.all(samples["imaginary_impedance_ohm"][eis] < 0)


async def test_goto_skips_to_target(run_dir):
    s = session(run_dir, [goto_program()])
    await s.execute()
    ch = s.runners["ch1"].channel
    assert ch.steps_run == ["CC -1 mA until 0.3 V", "hold 0.3 V", "Rest 20.0 s"]
    _, events, _, _ = journal(run_dir)
    assert [e.data["end_label"] for e in events if e.kind == "step_end"][0] == "until 0.3 V"


async def test_until_loop_on_cycle_count_and_at_most(run_dir, tmp_path):
    await session(run_dir, [until_program(at_most=20, threshold=3)]).execute()
    _, events, _, _ = journal(run_dir)
    assert sum(e.kind == "step_start" for e in events) == 6  # 3 iterations
    other = tmp_path / "b"
    await session(other, [until_program(at_most=4, threshold=100)]).execute()
    _, events, _, _ = journal(other)
    assert sum(e.kind == "step_start" for e in events) == 8  # bounded by at_most


class ScriptedCycleOperator:
    """A cycle operator whose coulombic efficiency follows a script, one value per finished cycle."""

    kind = "cycle"

    def __init__(self, ce):
        self.ce = list(ce)
        self.done = 0

    def feed_samples(self, rows):
        return []

    def feed_event(self, event):
        if event.kind == "step_end" and event.data.get("step_id") == 2:  # a charge ended: cycle complete
            self.done += 1
            return [SimpleNamespace(kind="cycle", data={"cycle_count": event.cycle_count,
                                                        "coulombic_efficiency": self.current()["coulombic_efficiency"],
                                                        "test_time_second": event.test_time_second})]
        return []

    def current(self):
        return {"coulombic_efficiency": self.ce[min(self.done, len(self.ce)) - 1] if self.done else None}


async def test_loop_until_coulombic_efficiency(run_dir):
    prog = until_program()
    start = dataclasses.replace(prog.instructions[0], until=Condition("coulombic_efficiency", ">=", 0.995),
                                at_most=10)
    prog = dataclasses.replace(prog, instructions=(start, *prog.instructions[1:]))
    s = session(run_dir, [prog], analysis=True,
                operator_factory=lambda p: [ScriptedCycleOperator([0.80, 0.97, 0.996, 0.999])])
    await s.execute()
    _, events, _, metrics = journal(run_dir)
    assert sum(e.kind == "step_start" for e in events) == 6  # left after the 3rd cycle (CE 0.996)
    assert [m["coulombic_efficiency"] for m in metrics] == [0.80, 0.97, 0.996]


async def test_safety_trip_within_one_block_and_safe_state(run_dir):
    # discharge "until -1 V" would cross the -0.05 V safety limit
    prog = Program(name="trip", instructions=(cc(0, -1e-3, -1.0),), cell=CELL, safety=SAFETY)
    s = session(run_dir, [prog], max_block_span=100.0)
    assert await s.execute() == {"ch1": "faulted"}
    ch = s.runners["ch1"].channel
    assert ch.output_on is False and ch.safe_calls >= 1
    samples, events, _, _ = journal(run_dir)
    assert_contiguous(samples, events)
    v = samples["voltage_volt"]
    first_out = int(np.flatnonzero(v < SAFETY.voltage_min)[0])
    per_block = 10  # 100 s blocks of 10 s records
    assert len(v) - first_out <= per_block  # nothing journaled beyond the block that crossed
    assert ch.blocks == len(v) // per_block + (len(v) % per_block > 0)
    trip = next(e for e in events if e.kind == "safety_trip")
    assert trip.data["limit"] == "voltage_min" and trip.data["value"] < -0.05
    assert kinds(events)[-3:] == ["step_end", "fault", "run_end"]
    assert events[-1].data == {"status": "faulted"}
    assert "voltage_min" in s.runners["ch1"].es.fault
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "faulted" and "voltage_min" in info["faults"]["ch1"]


async def test_trip_early_in_a_large_block_ends_the_step_at_the_offending_sample(run_dir):
    """One 1 h block (the max-speed span) holds the whole discharge, which crosses the -0.05 V limit
    about halfway and runs on to -1 V: the trip is at the sample completing the debounce (the second
    one below the limit; the first is only 6 mV below, under the 50 mV margin), every trip event has
    that sample's time, and no sample after it is journaled."""
    prog = Program(name="trip", instructions=(rest(0, 100.0), cc(1, -1e-3, -1.0)), cell=CELL, safety=SAFETY)
    s = session(run_dir, [prog], options={"capacity": 1.0}, max_block_span=3600.0)
    assert await s.execute() == {"ch1": "faulted"}
    ch = s.runners["ch1"].channel
    assert ch.blocks == 2 and ch.output_on is False  # the rest, and the discharge in one block
    samples, events, _, _ = journal(run_dir)
    assert_contiguous(samples, events)
    step = samples["step_count"] == 2
    t, v = samples["test_time_second"][step], samples["voltage_volt"][step]
    out = np.flatnonzero(v < SAFETY.voltage_min)
    assert len(out) == 2 and out[1] == out[0] + 1 == len(v) - 1  # the step's journal ends at the 2nd out
    assert -0.1 < v[out[0]] and v[out[1]] < -0.05
    trip = next(e for e in events if e.kind == "safety_trip")
    assert trip.data["limit"] == "voltage_min" and trip.data["value"] == v[-1]
    assert trip.test_time_second == t[-1] == 100.0 + 1040.0  # not the block's end (~1917 s)
    assert [e.test_time_second for e in events[-4:]] == [t[-1]] * 4  # safety_trip, step_end, fault, run_end
    assert kinds(events)[-4:] == ["safety_trip", "step_end", "fault", "run_end"]
    assert trip.sample_seq == samples["seq"][-1] + 1
    es = s.runners["ch1"].es
    assert es.test_time == t[-1] and es.seq == len(samples["seq"])
    # the engine counted the charge of the journaled samples only (1 mA from 0 to 1040 s of the step)
    assert es.step_charge == pytest.approx(-1e-3 * 1040.0, rel=1e-12)


async def test_sweep_from_the_ocv_starts_at_the_potential_measured_last(run_dir):
    """A from-OCV sweep after a rest starts where the rest ended (step_start names the start, the
    first sweep sample is there); with nothing measured before it the channel faults in one line."""
    sweep = Sweep(step_id=1, name="CV from OCV", start=math.nan, vertices=(0.2, 1.0), scan_rate=1e-3,
                  limits=SAFETY, record=Record(every=10.0), technique="cv", from_ocv=True)
    prog = Program(name="ocv cv", instructions=(rest(0, 100.0), sweep), cell=CELL, safety=SAFETY)
    s = session(run_dir, [prog], options={"x0": 0.25})
    assert await s.execute() == {"ch1": "done"}
    samples, events, _, _ = journal(run_dir)
    v, sc = samples["voltage_volt"], samples["step_count"]
    ocv = v[sc == 1][-1]
    assert ocv == pytest.approx(1.2 - 1.2 * 0.25)
    start = [e for e in events if e.kind == "step_start"][1]
    assert start.data["start_volt"] == ocv and start.data["start_at_ocv"] is True
    assert v[sc == 2][0] == pytest.approx(ocv)
    assert s.runners["ch1"].es.sweep_start is None  # cleared at the step's end

    alone = Program(name="no ocv", instructions=(sweep,), cell=CELL, safety=SAFETY)
    s = session(run_dir.parent / "alone", [alone])
    assert await s.execute() == {"ch1": "faulted"}
    assert "nothing was measured before it" in s.runners["ch1"].es.fault


async def test_per_step_limit_tighter_than_global(run_dir):
    step = cc(0, -1e-3, 0.0, limits=SAFETY.merged(Limits(step_duration_max=500.0)))
    prog = Program(name="dur", instructions=(step,), cell=CELL, safety=SAFETY)
    s = session(run_dir, [prog])
    assert await s.execute() == {"ch1": "faulted"}
    _, events, _, _ = journal(run_dir)
    assert next(e for e in events if e.kind == "safety_trip").data["limit"] == "step_duration_max"


async def test_instrument_error_faults_with_data_intact(run_dir):
    s = session(run_dir, [cycling(3)], options={"fail_after": 3, "block_samples": 5})
    assert await s.execute() == {"ch1": "faulted"}
    ch = s.runners["ch1"].channel
    assert ch.output_on is False
    samples, events, _, _ = journal(run_dir)
    assert_contiguous(samples, events)
    assert len(samples["seq"]) == 7 + 5  # rest (7 samples in 2 blocks) + one more block of 5
    fault = next(e for e in events if e.kind == "fault")
    assert "simulated instrument failure" in fault.data["message"] and "READ?" in fault.data["message"]
    assert fault.data["kind"] == "instrument"


async def test_instrument_that_stops_answering(run_dir):
    s = session(run_dir, [cycling(3)], options={"hang_after": 2, "block_samples": 5}, watchdog=0.2)
    assert await s.execute() == {"ch1": "faulted"}
    assert s.runners["ch1"].channel.output_on is False
    samples, events, _, _ = journal(run_dir)
    assert len(samples["seq"]) == 7
    assert "no answer from the instrument" in next(e for e in events if e.kind == "fault").data["message"]


async def test_many_channels_in_one_process(run_dir):
    s = session(run_dir, [cycling(2), cycling(3), goto_program()])
    assert await s.execute() == {"ch1": "done", "ch2": "done", "ch3": "done"}
    for ch, n in (("ch1", 2), ("ch2", 3)):
        samples, events, _, _ = journal(run_dir, ch)
        assert_contiguous(samples, events)
        assert samples["cycle_count"][-1] == n


async def test_loop_without_bound_runs_once(run_dir):
    ins = (LoopStart(loop_id=0, end=2), cc(0, -1e-3, 0.5), LoopEnd(loop_id=0, start=0))
    await session(run_dir, [Program(name="once", instructions=ins, cell=CELL, safety=SAFETY)]).execute()
    _, events, _, _ = journal(run_dir)
    assert sum(e.kind == "step_start" for e in events) == 1


class FailingOperator:
    """An analysis with a bug: raises on its `after`-th block."""

    kind = "broken"

    def __init__(self, after: int) -> None:
        self.after, self.blocks = after, 0

    def feed_samples(self, rows):
        self.blocks += 1
        if self.blocks >= self.after:
            raise ZeroDivisionError("complex division by zero")
        return []

    def feed_event(self, event):
        return []


async def test_an_analysis_that_raises_is_switched_off_and_the_test_goes_on(run_dir):
    """A bug in one operator must not stop a months-long test: the operator is switched off with an
    `analysis_error` event, the run completes, the other operators keep producing and every sample is
    journaled."""
    ok = ScriptedCycleOperator([0.9, 0.95, 0.97])
    broken = FailingOperator(after=3)
    s = session(run_dir, [cycling(3)], analysis=True, operator_factory=lambda p: [broken, ok])
    assert await s.execute() == {"ch1": "done"}
    samples, events, _, metrics = journal(run_dir)
    assert_contiguous(samples, events)
    errors = [e for e in events if e.kind == "analysis_error"]
    assert len(errors) == 1 and errors[0].data["operator"] == "broken"
    assert errors[0].data["error"] == "ZeroDivisionError: complex division by zero"
    assert broken.blocks == 3  # not fed again once it failed
    assert [m["coulombic_efficiency"] for m in metrics] == [0.9, 0.95, 0.97]  # the other operator's rows
    assert metrics[-1]["test_time_second"] > errors[0].test_time_second  # ... also after the failure
    assert events[-1].kind == "run_end" and events[-1].data == {"status": "complete"}
