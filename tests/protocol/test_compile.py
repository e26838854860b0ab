"""The compiler: protocol + cell -> Program, to the letter of cyclerctl.program."""

from __future__ import annotations

import math

import pytest

from cyclerctl.channel import Capabilities
from cyclerctl.errors import ProtocolError
from cyclerctl.program import (
    ConstantCurrent,
    ConstantVoltage,
    Impedance,
    LoopEnd,
    LoopStart,
    Rest,
    SetTemperature,
    Sweep,
)
from cyclerctl.protocol import compile_protocol, load_text

HEAD = """cyclerctl: 1
name: t
cell: {active_mass: 4 mg, nominal_specific_capacity: 300 mAh/g}
safety: {voltage: [-0.05 V, 3 V], current: 5 mA, temperature: [-20 degC, 60 degC]}
record: {every: 10 s, voltage_change: 5 mV}
steps:
"""
MASS = 4e-6  # kg
ONE_C = 1.2e-3  # A: 1C of 300 mAh/g x 4 mg


def program(steps: str, head: str = HEAD, caps: Capabilities | None = None):
    return compile_protocol(load_text(head + steps, "t.yaml"), capabilities=caps)


def error(steps: str, head: str = HEAD, caps: Capabilities | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        program(steps, head, caps)
    return info.value


def test_step_strings_compile_to_si_setpoints_and_ends() -> None:
    p = program("  - Rest for 6 hours\n  - Discharge at 30 mA/g until 0.001 V\n  - Charge at C/10 for 10 hours or until 2.5 V\n")
    rest, dis, chg = p.instructions
    assert isinstance(rest, Rest) and rest.ends[0].quantity == "step_time" and rest.ends[0].value == 6 * 3600
    assert isinstance(dis, ConstantCurrent)
    assert dis.current == pytest.approx(-30e-3 / 1e-3 * MASS)  # 30 mA/g x 4 mg = -120 µA
    assert (dis.ends[0].quantity, dis.ends[0].op, dis.ends[0].value) == ("voltage", "<=", 0.001)
    assert dis.direction == -1 and dis.step_type == "CC_DCHG"
    assert chg.current == pytest.approx(ONE_C / 10) and chg.direction == 1
    assert [(e.quantity, e.op, e.value) for e in chg.ends] == [("step_time", ">=", 36000.0), ("voltage", ">=", 2.5)]
    assert [s.step_id for s in p.steps()] == [1, 2, 3]
    assert [s.source_line for s in p.steps()] == [7, 8, 9]


def test_global_safety_is_merged_into_each_step_with_per_step_limits_tighter() -> None:
    p = program("  - discharge: {current: 1 mA, until: 0 V}\n    limits: {current: 2 mA, voltage: [0 V, 2.8 V]}\n"
                "  - Charge at 1 mA until 2.5 V\n")
    a, b = p.instructions
    assert (a.limits.voltage_min, a.limits.voltage_max, a.limits.current_max) == (0.0, 2.8, 0.002)
    assert (b.limits.voltage_min, b.limits.voltage_max, b.limits.current_max) == (-0.05, 3.0, 0.005)
    assert b.limits.temperature_max == pytest.approx(333.15)
    assert p.safety == b.limits


def test_record_rules_global_and_per_step() -> None:
    p = program("  - Rest for 1 h\n  - rest: {for: 1 h}\n    record: {every: 1 s}\n")
    assert (p.record.every, p.record.voltage_change) == (10.0, 0.005)
    assert p.instructions[0].record == p.record
    assert (p.instructions[1].record.every, p.instructions[1].record.voltage_change) == (1.0, 0.005)


def test_capacity_and_dv_dt_and_explicit_ends() -> None:
    p = program("  - Discharge at 0.1C until 150 mAh/g or 0 V\n"
                "  - rest: {for: 2 h, until: dV/dt < 1 mV/h, dv_dt_window: 5 min}\n"
                "  - charge: {current: 0.1C, until: ['voltage >= 1.2 V', '|Q| >= 0.5 mAh']}\n")
    d, r, c = p.instructions
    assert d.ends[0].quantity == "abs_step_charge" and d.ends[0].value == pytest.approx(150 * 3.6 * MASS * 1e3)
    assert (r.ends[1].quantity, r.ends[1].op, r.ends[1].window) == ("abs_dv_dt", "<=", 300.0)
    assert r.ends[1].value == pytest.approx(1e-3 / 3600)
    assert [(e.quantity, e.op) for e in c.ends] == [("voltage", ">="), ("abs_step_charge", ">=")]
    assert c.ends[1].value == pytest.approx(1.8)


def test_hold_and_cccv() -> None:
    p = program("  - Hold at 2.5 V until C/50\n  - Charge at 0.1C until 2.5 V then hold until C/50\n")
    hold, cc, cv = p.instructions
    assert isinstance(hold, ConstantVoltage) and hold.voltage == 2.5 and hold.current_limit == 0.005
    assert (hold.ends[0].quantity, hold.ends[0].op) == ("abs_current", "<=")
    assert hold.ends[0].value == pytest.approx(ONE_C / 50)
    assert isinstance(cc, ConstantCurrent) and cc.technique == "cccv" and cc.ends[0].value == 2.5
    assert isinstance(cv, ConstantVoltage) and cv.technique == "cccv" and cv.direction == 1
    assert cv.step_id == cc.step_id and dict(cv.tags)["role"] == "cv"


def test_gitt_compiles_to_a_bounded_loop_of_pulses_and_relaxations() -> None:
    p = program("  - gitt: {current: -30 mA/g, pulse: 10 min, rest: {for: 1 h, until: 1 mV/h}, until: 0.001 V, at_most: 60}\n"
                "  - Rest for 1 min\n")
    start, pulse, relax, end, final, after = p.instructions
    assert isinstance(start, LoopStart) and start.count is None and start.until is None and start.at_most == 60
    assert start.end == 3 and isinstance(end, LoopEnd) and end.start == 0
    assert isinstance(pulse, ConstantCurrent) and pulse.technique == "gitt" and pulse.tags == (("role", "pulse"),)
    v_end, t_end = pulse.ends
    assert (v_end.quantity, v_end.op, v_end.value, v_end.goto) == ("voltage", "<=", 0.001, 4)
    assert (t_end.quantity, t_end.value, t_end.goto) == ("step_time", 600.0, None)
    assert isinstance(relax, Rest) and relax.technique == "gitt" and relax.tags == (("role", "relax"),)
    assert [e.quantity for e in relax.ends] == ["step_time", "abs_dv_dt"]
    assert isinstance(final, Rest) and final.technique == "gitt"  # the relaxation after the last pulse
    assert pulse.step_id == relax.step_id == final.step_id and after.step_id == pulse.step_id + 1


def test_gitt_default_bound_covers_twice_the_nominal_capacity() -> None:
    p = program("  - gitt: {current: 30 mA/g, pulse: 10 min, rest: 30 min, until: 2.5 V}\n")
    # 300 mAh/g at 30 mA/g is 10 h = 60 pulses of 10 min; twice that, plus two
    assert p.instructions[0].at_most == 122


def test_ici_compiles_to_a_loop_of_current_and_short_rests() -> None:
    p = program("  - ici: {current: -0.1C, interval: 5 min, interruption: 10 s, until: 0.001 V}\n  - Rest for 1 h\n")
    start, cc, rest, end, after = p.instructions
    assert isinstance(cc, ConstantCurrent) and cc.technique == "ici" and cc.current == pytest.approx(-ONE_C / 10)
    assert cc.ends[0].quantity == "voltage" and cc.ends[0].goto == 4
    assert cc.ends[1].value == 300.0
    assert isinstance(rest, Rest) and rest.technique == "ici" and rest.ends[0].value == 10.0
    assert isinstance(end, LoopEnd) and start.end == 3


def test_repeat_loops_are_not_unrolled() -> None:
    p = program("  - repeat: 12000\n    steps:\n      - Discharge at 1.7 A/g until 0.005 V\n      - Charge at 1 mA until 2 V\n",
                HEAD.replace("current: 5 mA", "current: 10 mA"))
    start, d, c, end = p.instructions
    assert (start.count, start.end, end.start) == (12000, 3, 0)
    assert d.step_id == 1 and c.step_id == 2


def test_repeat_until_a_live_metric() -> None:
    p = program("  - repeat: {until: coulombic_efficiency >= 99.5 %, at_most: 50}\n    steps:\n"
                "      - Discharge at 0.1C until 0 V\n      - Charge at 0.1C until 2.5 V\n"
                "  - repeat: {until: discharge_capacity < 80 % of cycle 20, at_most: 1000}\n    steps:\n"
                "      - Discharge at 0.1C until 0 V\n      - Charge at 0.1C until 2.5 V\n"
                "  - repeat: {until: specific_charge_capacity < 150 mAh/g, at_most: 10}\n    steps:\n"
                "      - Discharge at 0.1C until 0 V\n      - Charge at 0.1C until 2.5 V\n")
    a, b, c = (i for i in p.instructions if isinstance(i, LoopStart))
    assert (a.until.metric, a.until.op, a.until.value, a.at_most) == ("coulombic_efficiency", ">=", 0.995, 50)
    assert (b.until.metric, b.until.value, b.until.reference_cycle) == ("capacity_retention", 0.8, 20)
    assert (c.until.metric, c.until.value) == ("specific_charge_capacity", pytest.approx(150 * 3600))


def test_for_each_unrolls_and_substitutes() -> None:
    p = program("  - for_each: {scan_rate: [0.1, 0.5, 2], unit: mV/s}\n    steps:\n"
                "      - cv: {vertices: [0.01 V, 2.5 V], rate: $scan_rate, cycles: 2}\n"
                "  - for_each: {current: '[30, 60] mA/g'}\n    steps:\n      - Discharge at ${current} until 0 V\n")
    sweeps = [i for i in p.instructions if isinstance(i, Sweep)]
    assert [s.scan_rate for s in sweeps] == pytest.approx([1e-4, 5e-4, 2e-3])
    assert sweeps[0].start == 2.5 and sweeps[0].vertices == (0.01,) and sweeps[0].cycles == 2
    currents = [i.current for i in p.instructions if isinstance(i, ConstantCurrent)]
    assert currents == pytest.approx([-30e-3 * 4e-3, -60e-3 * 4e-3])
    assert [i.name for i in p.instructions if isinstance(i, ConstantCurrent)] == [
        "Discharge at 30 mA/g until 0 V", "Discharge at 60 mA/g until 0 V"]


def test_gotos_resolve_to_labelled_instructions() -> None:
    p = program("  - rest: {for: 1 h}\n    label: start\n"
                "  - discharge:\n      current: 1 mA\n      until: [0 V, {when: 2 h, goto: start}, {when: 3 h, goto: end}]\n"
                "  - repeat: 2\n    label: loop\n    steps:\n      - charge: {current: 1 mA, until: [{when: 2.5 V, goto: loop}, 3 h]}\n")
    assert dict(p.labels) == {"start": 0, "loop": 2}
    ends = p.instructions[1].ends
    assert [e.goto for e in ends] == [None, 0, len(p.instructions)]
    assert p.instructions[3].ends[0].goto == 2


def test_gotos_that_only_lead_back_are_a_loop_with_no_way_out() -> None:
    e = error("  - rest: {for: 1 h}\n    label: a\n  - rest: {until: [{when: 1 h, goto: a}]}\n")
    assert e.line == 9 and "a loop with no way out" in e.message
    program("  - rest: {for: 1 h}\n    label: a\n  - rest: {until: [{when: 1 h, goto: a}, {when: voltage >= 2 V, goto: end}]}\n")


def test_label_inside_for_each_is_local_to_each_iteration() -> None:
    p = program("  - for_each: {v: [1 V, 2 V]}\n    steps:\n"
                "      - rest: {for: 1 h}\n        label: here\n"
                "      - charge: {current: 1 mA, until: [{when: $v, goto: here}, 2 h]}\n")
    r0, c0, r1, c1 = p.instructions
    assert c0.ends[0].goto == 0 and c1.ends[0].goto == 2


def test_sweep_and_eis_and_temperature() -> None:
    p = program("  - cv: {start: 2.5 V, vertices: [0 V, 2.5 V], rate: 0.5 mV/s, cycles: 5, end_at_start: false}\n"
                "  - eis: {bias: ocv, amplitude: 5 mV, from: 100 kHz, to: 10 mHz, per_decade: 10}\n"
                "  - eis: {mode: galvanostatic, bias: 0 A, amplitude: 10 uA, from: 10 kHz, to: 1 Hz}\n"
                "  - temperature: {set: -10 degC, within: 0.2 K, stable_for: 30 min, timeout: 3 h}\n")
    cv, eis, geis, temp = p.instructions
    assert cv.segments()[:2] == [(2.5, 0.0), (0.0, 2.5)] and len(cv.segments()) == 10
    assert cv.duration == pytest.approx(5 * 5.0 / 5e-4)
    assert (eis.freq_start, eis.freq_stop, eis.bias, eis.amplitude) == (1e5, 1e-2, None, 0.005)
    assert len(eis.frequencies()) == 71
    assert geis.mode == "galvanostatic" and geis.bias == 0.0 and geis.amplitude == pytest.approx(1e-5)
    assert isinstance(temp, SetTemperature) and temp.temperature == pytest.approx(263.15)
    assert (temp.tolerance, temp.stable_for, temp.timeout) == (0.2, 1800.0, 10800.0)
    assert isinstance(eis, Impedance) and eis.technique == "eis"


def test_cycle_rule_and_cell_are_carried() -> None:
    p = program("  - Rest for 1 h\n", HEAD.replace("steps:\n", "cycle_starts_on: charge\nretention_reference_cycle: 21\nsteps:\n"))
    assert p.cycle_starts_on == "charge" and p.retention_reference_cycle == 21
    assert p.cell.active_mass == pytest.approx(MASS) and p.cell.nominal_capacity == pytest.approx(300 * 3.6 * MASS * 1e3)
    assert p.source == "t.yaml" and len(p.protocol_hash) == 64


CAPS = Capabilities(model="tiny", voltage_range=(-1.0, 2.0), current_max=1e-4, scan_rate_range=(1e-5, 1e-2),
                    frequency_range=(1e-2, 1e4), techniques=frozenset({"rest", "current", "voltage", "sweep", "impedance"}))


@pytest.mark.parametrize("steps, message", [
    ("  - Discharge at 1 mA until 0 V\n", "beyond the instrument tiny"),
    ("  - Hold at 2.5 V until 1 uA\n", "beyond the instrument tiny"),
    ("  - cv: {vertices: [0 V, 1 V], rate: 1 V/s}\n", "beyond the instrument tiny"),
    ("  - eis: {amplitude: 5 mV, from: 100 kHz, to: 1 Hz}\n", "beyond the instrument tiny"),
    ("  - temperature: {set: 25 degC}\n", "cannot do temperature steps"),
])
def test_capability_envelope_is_enforced(steps: str, message: str) -> None:
    assert message in str(error(steps, caps=CAPS))
    program("  - Discharge at 10 uA until 0 V\n", caps=CAPS)  # within the envelope


def test_sweep_from_the_open_circuit_voltage() -> None:
    """start: ocv leaves the start to the run (NaN until the engine resolves it with the potential it
    measured last); without end_at_start each later cycle starts at the last vertex."""
    p = program("  - rest: {for: 2 h}\n"
                "  - cv: {start: ocv, vertices: [0 V, 2.5 V], rate: 0.5 mV/s, cycles: 3, end_at_start: false}\n")
    cv = p.instructions[1]
    assert isinstance(cv, Sweep) and cv.from_ocv and not cv.resolved and math.isnan(cv.start)
    assert cv.name.startswith("CV OCV, 0 V, 2.5 V")
    assert cv.duration == pytest.approx(5 * 2.5 / 5e-4)  # without the way from the OCV to 0 V
    at = cv.at(1.26)
    assert at.resolved and at.from_ocv
    assert at.segments() == [(1.26, 0.0), (0.0, 2.5), (2.5, 0.0), (0.0, 2.5), (2.5, 0.0), (0.0, 2.5)]
    assert at.duration == pytest.approx((1.26 + 5 * 2.5) / 5e-4)
    back = program("  - rest: {for: 1 h}\n  - cv: {start: OCP, vertices: [0 V, 2 V], rate: 1 mV/s, cycles: 2}\n")
    assert back.instructions[1].at(1.0).segments() == [(1.0, 0.0), (0.0, 2.0), (2.0, 1.0)] * 2


def test_sweep_cycles_without_return_never_jump() -> None:
    cv = program("  - cv: {start: 1 V, vertices: [0 V, 2 V], rate: 1 mV/s, cycles: 2, end_at_start: false}\n")
    segs = cv.instructions[0].segments()
    assert segs == [(1.0, 0.0), (0.0, 2.0), (2.0, 0.0), (0.0, 2.0)]
    assert all(a[1] == b[0] for a, b in zip(segs[:-1], segs[1:], strict=True))


def test_sweep_from_the_ocv_needs_a_step_before_it() -> None:
    e = error("  - cv: {start: ocv, vertices: [0 V, 2.5 V], rate: 0.5 mV/s}\n")
    assert "needs a step before it" in str(e) and "start" in str(e)
    e = error("  - cv: {start: 1 V, vertices: [0 V], rate: 1 mV/s, cycles: 2, end_at_start: false}\n")
    assert "runs once" in str(e)


def test_all_errors_of_a_file_are_reported_in_file_order() -> None:
    from cyclerctl.protocol import all_errors

    e = error("  - Discharge at 30 V until 0 V\n  - Rest for 1 h\n  - Charge at 1 mA\n")
    lines = [(x.line, x.message.split(":")[0]) for x in all_errors(e)]
    assert lines == [(7, "steps[0].discharge.current"), (9, "steps[2].charge")]


def test_step_duration_limit_catches_a_sweep_that_is_too_long() -> None:
    e = error("  - cv: {vertices: [0 V, 2.5 V], rate: 0.01 mV/s, cycles: 5}\n    limits: {step_duration: 24 h}\n")
    assert "longer than the step duration limit" in str(e)


def test_limits_default_to_unbounded_only_where_not_given() -> None:
    p = program("  - Rest for 1 h\n", HEAD.replace(", temperature: [-20 degC, 60 degC]", ""))
    assert math.isinf(p.safety.temperature_max) and p.safety.voltage_max == 3.0


def test_setpoint_below_the_instruments_resolution() -> None:
    from dataclasses import replace

    caps = replace(CAPS, current_resolution=1e-6)
    assert "below the resolution" in str(error("  - Discharge at 100 nA until 0 V\n", caps=caps))


@pytest.mark.parametrize("text, metric, op, value, ref", [
    ("coulombic efficiency ≥ 99.5 %", "coulombic_efficiency", ">=", 0.995, None),
    ("CE > 0.99", "coulombic_efficiency", ">", 0.99, None),
    ("discharge capacity < 80 % of cycle 20", "capacity_retention", "<", 0.8, 20),
    ("capacity_retention <= 50 %", "capacity_retention", "<=", 0.5, 21),
    ("specific_discharge_capacity < 200 mAh/g", "specific_discharge_capacity", "<", 200 * 3600, None),
    ("charge_capacity < 0.5 mAh", "charge_capacity", "<", 1.8, None),
    ("cycle_count >= 100", "cycle_count", ">=", 100, None),
])
def test_loop_conditions_read_as_people_write_them(text, metric, op, value, ref) -> None:
    p = program(f"  - repeat: {{until: '{text}', at_most: 5}}\n    steps:\n"
                "      - Discharge at 0.1C until 0 V\n      - Charge at 0.1C until 2.5 V\n",
                HEAD.replace("steps:\n", "retention_reference_cycle: 21\nsteps:\n"))
    cond = p.instructions[0].until
    assert (cond.metric, cond.op, cond.reference_cycle) == (metric, op, ref)
    assert cond.value == pytest.approx(value)


@pytest.mark.parametrize("text, message", [
    ("efficiency >= 99 %", "unknown metric 'efficiency'"),
    ("coulombic_efficiency about 99 %", "cannot read the loop condition"),
    ("cycle_count >= many", "whole number"),
    ("discharge_capacity < 2 V", "expected a capacity"),
])
def test_unreadable_loop_conditions(text: str, message: str) -> None:
    e = error(f"  - repeat: {{until: '{text}', at_most: 5}}\n    steps:\n      - Rest for 1 h\n")
    assert message in e.message and e.line == 7


def test_overflowing_quantities_are_refused() -> None:
    assert "is too large" in error("  - rest: {for: 1e308 h}\n").message


def test_eis_waveform_acquisition_is_carried_and_checked() -> None:
    eis = program("  - eis: {amplitude: 5 mV, from: 1 kHz, to: 10 mHz, acquisition: waveform, samples_per_period: 32, "
                  "periods: 3}\n").steps()[0]
    assert isinstance(eis, Impedance)
    assert (eis.acquisition, eis.samples_per_period, eis.periods) == ("waveform", 32, 3)
    plain = program("  - eis: {amplitude: 5 mV, from: 1 kHz, to: 10 mHz}\n").steps()[0]
    assert plain.acquisition == "spectrum"
    defaults = program("  - eis: {amplitude: 5 mV, from: 1 kHz, to: 10 mHz, acquisition: waveform}\n").steps()[0]
    assert (defaults.samples_per_period, defaults.periods) == (64, 4)


@pytest.mark.parametrize("steps, message", [
    ("  - eis: {amplitude: 5 mV, from: 1 kHz, to: 1 Hz, samples_per_period: 32}\n",
     "'samples_per_period' applies only to 'acquisition: waveform'"),
    ("  - eis: {amplitude: 5 mV, from: 1 kHz, to: 1 Hz, acquisition: waveform, samples_per_period: 4}\n",
     "give at least 8"),
    ("  - eis: {amplitude: 5 mV, from: 1 kHz, to: 1 Hz, acquisition: waveform, periods: 5000}\n", "at most 1000"),
    ("  - eis: {amplitude: 5 mV, from: 1 kHz, to: 1 mHz, per_decade: 1000, acquisition: waveform, periods: 100}\n",
     "lower samples_per_period, periods or per_decade"),
    ("  - eis: {amplitude: 5 mV, from: 1 kHz, to: 1 Hz, acquisition: sampled}\n", "acquisition"),
])
def test_eis_waveform_errors_say_what_to_fix(steps: str, message: str) -> None:
    e = str(error(steps))
    assert message in e and "\n" not in e.strip()


def test_eis_waveform_is_refused_where_the_instrument_cannot_record_it() -> None:
    e = str(error("  - eis: {amplitude: 5 mV, from: 1 kHz, to: 1 Hz, acquisition: waveform}\n", caps=CAPS))
    assert "cannot record the impedance waveform; use 'acquisition: spectrum'" in e
    fast = Capabilities(model="slow", frequency_range=(1e-3, 1e5), min_sample_period=1e-3,
                        techniques=frozenset({"rest", "impedance", "impedance_waveform"}))
    e = str(error("  - eis: {amplitude: 5 mV, from: 1 kHz, to: 1 Hz, acquisition: waveform}\n", caps=fast))
    assert "needs a sample every 15.62 µs" in e and "samples at most every 0.001 s: start at 15.62 Hz or below" in e
    program("  - eis: {amplitude: 5 mV, from: 10 Hz, to: 10 mHz, acquisition: waveform}\n", caps=fast)
