"""Wire-level tests of the Keithley 2450 driver: the exact SCPI sent for each step kind (an
expected-protocol resource), and conformance against a pyvisa-sim definition of the instrument."""

from __future__ import annotations

import pytest
from driverkit import ExpectedProtocol

from cyclerctl.channel import StepStart
from cyclerctl.clock import WallClock
from cyclerctl.drivers.keithley2450 import Keithley2450, Keithley2450Channel
from cyclerctl.drivers.scpi import controls
from cyclerctl.errors import ConfigError, InstrumentError
from cyclerctl.paths import data_dir
from cyclerctl.program import ConstantCurrent, ConstantVoltage, End, Impedance, Limits, Record, Rest, Sweep

IDN = "KEITHLEY INSTRUMENTS,MODEL 2450,04096331,1.7.12b"
READ = ':READ? "defbuffer1", READ, SOUR, REL'
NO_ERROR = '0,"No error"'
SAFE = [(":OUTP:CURR:SMOD HIMP", None), (":OUTP:VOLT:SMOD HIMP", None), (":OUTP OFF", None), (":OUTP?", "0")]
OPEN = [*SAFE, ("*IDN?", IDN), ("*LANG?", "SCPI"), ("*CLS", None), (":SYST:ERR?", NO_ERROR)]
CURRENT_MODE = [
    (":SOUR:FUNC CURR", None), (":SOUR:CURR:RANG:AUTO ON", None), (":SOUR:CURR:READ:BACK ON", None),
    (':SENS:FUNC "VOLT"', None), (":SENS:VOLT:RANG:AUTO ON", None), (":SENS:VOLT:NPLC 1", None),
    (":SENS:VOLT:RSEN ON", None), (":OUTP:CURR:SMOD HIMP", None),
]
VOLTAGE_MODE = [
    (":SOUR:FUNC VOLT", None), (":SOUR:VOLT:RANG:AUTO ON", None), (":SOUR:VOLT:READ:BACK ON", None),
    (':SENS:FUNC "CURR"', None), (":SENS:CURR:RANG:AUTO ON", None), (":SENS:CURR:NPLC 1", None),
    (":SENS:CURR:RSEN ON", None), (":OUTP:VOLT:SMOD HIMP", None),
]
WINDOW = Limits(voltage_min=-0.05, voltage_max=3.0, current_max=5e-3)


async def _run(pairs, step, start=None):
    res = ExpectedProtocol(pairs)
    ch = Keithley2450Channel(res, WallClock(1.0), poll_period=0.0)
    await ch.open()
    blocks = [b async for b in ch.run_step(step, start or StepStart(0.0))]
    assert res.done(), f"only {res.k} of {len(res.pairs)} messages were exchanged"
    return blocks


async def test_constant_current_with_voltage_limit_and_cutoff():
    step = ConstantCurrent(step_id=0, name="Discharge at 1 mA until 0.5 V", current=-1e-3,
                           ends=(End("voltage", "<=", 0.5),), limits=WINDOW)
    pairs = [*OPEN, *CURRENT_MODE, (":SOUR:CURR:VLIM 3.170000e+00", None), (":SYST:ERR?", NO_ERROR),
             (":SOUR:CURR -1.000000e-03", None), (":OUTP ON", None),
             (READ, "6.000000E-01,-1.000000E-03,1.000000E+01"), (":SYST:ERR?", NO_ERROR),
             (READ, "4.990000E-01,-1.000000E-03,1.100000E+01"),
             (":SOUR:CURR 0.000000e+00", None)]  # the cutoff: 0 A at once
    blocks = await _run(pairs, step)
    last = blocks[-1]
    assert last.final and last.end == 0
    assert list(last.columns["step_time_second"]) == [0.0, 1.0]
    assert list(last.voltage) == [0.6, 0.499]


async def test_rest_is_a_zero_current_source_not_output_off():
    step = Rest(step_id=1, name="Rest for 2 s", ends=(End("step_time", ">=", 2.0),), limits=WINDOW,
                record=Record(every=1.0))
    pairs = [*OPEN, *CURRENT_MODE, (":SOUR:CURR:VLIM 3.170000e+00", None), (":SYST:ERR?", NO_ERROR),
             (":SOUR:CURR 0.000000e+00", None), (":OUTP ON", None),
             (READ, "1.200000E+00,0.000000E+00,5.000000E+00"), (":SYST:ERR?", NO_ERROR),
             (READ, "1.200100E+00,0.000000E+00,6.000000E+00"),
             (READ, "1.200200E+00,0.000000E+00,7.000000E+00")]
    blocks = await _run(pairs, step)
    times = [t for b in blocks for t in b.columns["step_time_second"]]
    assert blocks[-1].end == 0 and times == [0.0, 1.0, 2.0]
    assert [b.final for b in blocks] == [False] * (len(blocks) - 1) + [True]


async def test_cv_hold_with_current_limit_ends_on_the_current_tail():
    step = ConstantVoltage(step_id=2, name="Hold at 1.5 V until 0.1 mA", voltage=1.5, current_limit=1e-3,
                           ends=(End("abs_current", "<=", 1e-4),), limits=WINDOW)
    pairs = [*OPEN, *VOLTAGE_MODE, (":SOUR:VOLT:ILIM 1.000000e-03", None), (":SYST:ERR?", NO_ERROR),
             (":SOUR:VOLT 1.500000e+00", None), (":OUTP ON", None),
             (READ, "1.000000E-03,1.500000E+00,1.000000E+00"), (":SYST:ERR?", NO_ERROR),
             (READ, "9.000000E-05,1.500000E+00,2.000000E+00")]
    blocks = await _run(pairs, step)
    assert blocks[-1].end == 0
    assert list(blocks[-1].current) == [1e-3, 9e-5] and list(blocks[-1].voltage) == [1.5, 1.5]


async def test_staircase_sweep_steps_the_source_voltage():
    step = Sweep(step_id=3, name="CV", start=0.5, vertices=(0.502,), scan_rate=1.0, end_at_start=False,
                 limits=WINDOW, record=Record(every=None))
    ch_pairs = [*OPEN, *VOLTAGE_MODE, (":SOUR:VOLT:ILIM 5.000000e-03", None), (":SYST:ERR?", NO_ERROR),
                (":SOUR:VOLT 5.000000e-01", None), (":OUTP ON", None),
                (READ, "1.000000E-05,5.010000E-01,1.000000E+00"),
                (":SOUR:VOLT 5.020000e-01", None),
                (READ, "2.000000E-05,5.020000E-01,2.000000E+00")]
    res = ExpectedProtocol(ch_pairs)
    ch = Keithley2450Channel(res, WallClock(1.0), sweep_step=1e-3)
    await ch.open()
    blocks = [b async for b in ch.run_step(step, StepStart(0.0))]
    assert res.done()
    assert blocks[-1].final and blocks[-1].end is None
    assert list(blocks[-1].columns["sweep_segment"]) == [0.0, 0.0]


async def test_error_queue_entries_fail_the_configuration_in_one_line():
    step = ConstantCurrent(step_id=0, name="d", current=-1e-3, ends=(), limits=WINDOW)
    pairs = [*OPEN, *CURRENT_MODE, (":SOUR:CURR:VLIM 3.170000e+00", None),
             (":SYST:ERR?", '-222,"Parameter data out of range"'), (":SYST:ERR?", NO_ERROR), *SAFE]
    res = ExpectedProtocol(pairs)
    ch = Keithley2450Channel(res, WallClock(1.0))
    await ch.open()
    with pytest.raises(InstrumentError) as err:
        async for _ in ch.run_step(step, StepStart(0.0)):
            pass
    assert res.done()  # ... and the output went safe (HIMP, off)
    text = str(err.value)
    assert "\n" not in text and "-222" in text and ":SOUR:CURR:VLIM" in text


async def test_no_impedance_on_an_smu():
    ch = Keithley2450Channel(ExpectedProtocol(OPEN), WallClock(1.0))
    await ch.open()
    with pytest.raises(InstrumentError, match="cannot run EIS"):
        async for _ in ch.run_step(Impedance(step_id=0, name="eis"), StepStart(0.0)):
            pass


async def test_wrong_command_set_is_refused():
    ch = Keithley2450Channel(ExpectedProtocol([*SAFE, ("*IDN?", IDN), ("*LANG?", "TSP")]), WallClock(1.0),
                             retries=0)
    with pytest.raises(InstrumentError, match="SCPI"):
        await ch.open()


async def test_real_hardware_refuses_accelerated_time():
    ch = Keithley2450Channel(ExpectedProtocol([*OPEN, *SAFE]), WallClock(10.0))
    with pytest.raises(ConfigError, match="speed 1"):
        await ch.open()


def test_properties_are_declared_with_validators():
    table = controls(Keithley2450)
    assert {"source_current", "voltage_limit", "current_output_off_mode", "output"} <= set(table)
    assert all(c.__doc__ for c in table.values())
    inst = Keithley2450(ExpectedProtocol([]))
    with pytest.raises(ConfigError, match="outside the instrument's range"):
        inst.source_current = 2.0
    with pytest.raises(ConfigError, match="must be one of"):
        inst.current_output_off_mode = "open"


def test_pyvisa_sim_definition_conformance():
    """The driver's property strings against the pyvisa-sim model of the 2450 in drivers/."""
    path = data_dir("drivers") / "keithley2450-pyvisa-sim.yaml"
    inst = Keithley2450("TCPIP0::127.0.0.1::5025::SOCKET", backend=f"{path}@sim")
    try:
        inst.connect()
        assert "MODEL 2450" in inst.identity and inst.language == "SCPI"
        inst.source_current = -2e-3
        assert inst.source_current == pytest.approx(-2e-3)
        inst.voltage_limit = 3.0
        assert inst.voltage_limit == pytest.approx(3.0)
        inst.current_output_off_mode = "high_impedance"
        assert inst.current_output_off_mode == "high_impedance"
        inst.output = True
        assert inst.output is True
        assert inst.drain_errors() == []
        inst.write(":SOUR:CURR 5")  # out of range for the model: lands in the error queue
        assert inst.drain_errors()[0][0] == -222
        v, i, t = inst.read()
        assert 0.0 < v < 3.0 and i == pytest.approx(-1e-3)
    finally:
        inst.close()
