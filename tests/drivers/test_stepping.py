"""The host-side step logic: end conditions, the record rule, block cutting."""

from __future__ import annotations

from cyclerctl.channel import StepStart
from cyclerctl.drivers.stepping import BlockBuilder, EndWatch, Recorder
from cyclerctl.program import End, Record


def test_first_end_that_holds_fires():
    w = EndWatch((End("voltage", "<=", 0.0), End("step_time", ">=", 10.0)), StepStart(0.0))
    assert w.feed(0.0, 0.5, -1e-3) is None
    assert w.feed(10.0, 0.4, -1e-3) == 1
    assert w.feed(11.0, -0.001, -1e-3) == 0


def test_step_charge_integrates_from_the_resumed_charge():
    w = EndWatch((End("abs_step_charge", ">=", 3.0),), StepStart(0.0, step_time=100.0, step_charge=-2.0))
    assert w.feed(100.0, 0.5, -1e-2) is None
    assert w.feed(150.0, 0.5, -1e-2) is None  # -2.5 C
    assert w.feed(200.0, 0.5, -1e-2) == 0  # -3.0 C
    assert abs(w.step_charge + 3.0) < 1e-12


def test_dv_dt_waits_for_a_full_window():
    w = EndWatch((End("abs_dv_dt", "<=", 1e-4, window=60.0),), StepStart(0.0))
    assert w.feed(0.0, 1.0, 0.0) is None
    assert w.feed(30.0, 1.0, 0.0) is None  # flat, but the window is not full yet
    assert w.feed(59.0, 1.0, 0.0) is None
    assert w.feed(61.0, 1.001, 0.0) == 0  # 1 mV in 61 s < 0.1 mV/s


def test_record_rule_keeps_time_and_voltage_changes():
    r = Recorder(Record(every=10.0, voltage_change=0.005))
    kept = []
    for t, v in [(0, 1.0), (1, 1.001), (2, 1.006), (5, 1.007), (12, 1.008), (13, 1.02)]:
        if r.wants(t, v, 0.0):
            r.kept(t, v, 0.0)
            kept.append(t)
    assert kept == [0, 2, 12, 13]


def test_blocks_are_cut_by_test_time_span():
    b = BlockBuilder(10.0, ("test_time_second", "voltage_volt"))
    b.add((0.0, 1.0))
    assert not b.due(5.0)
    b.add((10.0, 1.1))
    assert b.due(10.0)
    block = b.take()
    assert len(block) == 2 and not block.final
    assert list(block.columns["voltage_volt"]) == [1.0, 1.1]
