"""MethodSCRIPT: the packet codec against the documented examples, literals, and the exact script
compiled for each step kind (as the simulated EmStat receives it over a pseudo-terminal)."""

from __future__ import annotations

import math

import pytest
from driverkit import run_steps
from hypothesis import given
from hypothesis import strategies as st
from instrument_servers import emstat_pty

from cyclerctl.clock import WallClock
from cyclerctl.drivers.emstat import EmStatChannel
from cyclerctl.drivers.methodscript import (
    PacketError,
    compile_step,
    decode_packet,
    decode_variable,
    encode_variable,
    is_error,
    literal,
)
from cyclerctl.program import ConstantCurrent, ConstantVoltage, End, Impedance, Record, Rest, Sweep
from cyclerctl.sim.instruments.emstat import parse_literal, parse_script


@pytest.mark.parametrize("text, value", [
    ("da7F85F3Fu", -0.499905), ("ba48D503Dp", -57.847747e-6), ("dcDF5DFF4u", 99.999732),
    ("cc896D904m", 9885.956), ("cd82DB1A8u", 2.9946), ("da84E63DAn", 5.13737e-3),
])
def test_documented_variables_decode(text, value):
    assert decode_variable(text).value == pytest.approx(value, rel=1e-6)


def test_metadata_and_nan():
    v = decode_variable("ba48D503Dp,10,288")
    assert v.type == "ba" and v.status == 0 and v.range == 0x88
    assert math.isnan(decode_variable("ab     nan").value)
    p = decode_packet("Pda7F85F3Fu;ba48D503Dp,12,288")
    assert [x.type for x in p] == ["da", "ba"] and p[1].status == 0x2


@pytest.mark.parametrize("bad", ["Pda7F85F3", "Pzz7F85F3Fq", "PdaXYZXYZXu", "X", "P"])
def test_garbage_is_a_packet_error(bad):
    with pytest.raises(PacketError):
        decode_packet(bad)


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda x: x == 0 or abs(x) > 1e-15))
def test_encode_decode_round_trip(x):
    y = decode_variable(encode_variable("ab", x)).value
    assert y == pytest.approx(x, rel=8e-6, abs=1e-18)  # 28 bits: >= 5 significant digits at worst


@given(st.floats(min_value=-100, max_value=100, allow_nan=False).filter(lambda x: x == 0 or abs(x) > 1e-9))
def test_literals_parse_back(x):
    assert parse_literal(literal(x)) == pytest.approx(x, rel=1e-7)


def test_error_codes():
    assert is_error("Z!0006") == "0006"
    assert is_error("!0004: syntax") == "0004"
    assert is_error("Pda7F85F3Fu") is None


def test_compiled_constant_current_breaks_on_the_voltage_limit():
    step = ConstantCurrent(step_id=0, name="d", current=-1.02e-3,
                           ends=(End("voltage", "<=", 0.005), End("step_time", ">=", 3600.0)))
    c = compile_step(step, interval=1.0)
    assert c.lines[7:] == [
        "set_pgstat_mode 6", "set_range ab 4", "set_autoranging ab 100m 4", "set_range db 10m", "set_i 0",
        "cell_on", "timer_start", "meas_loop_cp p c -1020u 1 3600",
        "\ttimer_get t", "\tpck_start", "\tpck_add t", "\tpck_add p", "\tpck_add c", "\tpck_end",
        "\tif p <= 5m", "\t\tbreakloop", "\tendif", "endloop", "on_finished:", "cell_off"]
    assert c.on_instrument == {0, 1}
    body, finished = parse_script(c.lines)  # the simulated device accepts it
    assert finished[0][0] == "cell_off"


def test_compiled_cv_hold_breaks_on_the_current_tail_and_resumes_with_the_remaining_time():
    step = ConstantVoltage(step_id=0, name="h", voltage=1.5, current_limit=2e-3,
                           ends=(End("abs_current", "<=", 5e-5), End("step_time", ">=", 3600.0)))
    c = compile_step(step, interval=2.0, step_time=600.0)
    assert "meas_loop_ca p c 1500m 2 3k" in c.lines
    i = c.lines.index("\tif c <= 50u")
    assert c.lines[i:i + 5] == ["\tif c <= 50u", "\t\tif c >= -50u", "\t\t\tbreakloop", "\t\tendif", "\tendif"]
    assert c.on_instrument == {0, 1}


def test_compiled_rest_measures_open_circuit_with_the_cell_off():
    c = compile_step(Rest(step_id=0, name="r", ends=(End("step_time", ">=", 60.0), End("abs_dv_dt", "<=", 1e-6))),
                     interval=1.0)
    assert c.lines[c.lines.index("cell_off")+1:c.lines.index("cell_off")+3] == ["timer_start", "meas_loop_ocp p 1 60"]
    assert c.on_instrument == {0}  # |dV/dt| is judged by the host, which then aborts


def test_compiled_sweep_and_eis():
    cv = compile_step(Sweep(step_id=0, name="cv", start=1.0, vertices=(0.01, 2.5), scan_rate=1e-3, cycles=2),
                      interval=1.0)
    assert "meas_loop_cv p c 1 10m 2500m 1m 1m nscans(2)" in cv.lines
    eis = compile_step(Impedance(step_id=0, name="eis", freq_start=1e5, freq_stop=1e-2, points_per_decade=10,
                                 amplitude=5e-3), interval=1.0)
    assert "meas_loop_ocp p 100m 1" in eis.lines
    assert "meas_loop_eis f r j 5m 100k 10m 71i p" in eis.lines


async def test_emstat_sends_exactly_the_compiled_script_and_reads_its_packets():
    step = ConstantCurrent(step_id=0, name="d", current=-1e-3, record=Record(every=5.0),
                           ends=(End("step_time", ">=", 30.0),))
    with emstat_pty(100.0) as (dev, port):
        ch = EmStatChannel(port, WallClock(100.0), interval=1.0)
        await ch.open()
        assert ch.device == "es4_hr" and not ch.capabilities.real_hardware
        [run] = await run_steps(ch, [step])
        await ch.close()
    assert dev.scripts[-1] == compile_step(step, interval=1.0).lines
    cols = run["columns"]
    assert run["end"] == 0
    assert list(cols["step_time_second"]) == pytest.approx([1, 6, 11, 16, 21, 26, 30], abs=1e-5)
    assert (cols["current_ampere"] == -1e-3).all() and (cols["voltage_volt"] < 1.3).all()
