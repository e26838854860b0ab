"""Injected faults on the simulated instruments: transient ones are retried with bounded backoff (and
logged) without losing data; lasting ones end in the safe state and one clear line."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from driverkit import run_steps
from instrument_servers import emstat_pty, emstat_tcp, keithley_server

from cyclerctl.clock import WallClock
from cyclerctl.drivers.emstat import EmStatChannel
from cyclerctl.drivers.keithley2450 import Keithley2450Channel
from cyclerctl.errors import InstrumentError
from cyclerctl.program import ConstantCurrent, End, Limits, Record

SPEED = 200.0
KEITHLEY_SPEED = 50.0  # a 0.2 s (wall) read timeout is then 10 s of cell time
WINDOW = Limits(voltage_min=-0.05, voltage_max=3.0)


def discharge(seconds: float) -> ConstantCurrent:
    return ConstantCurrent(step_id=0, name="Discharge", current=-1e-3, record=Record(every=5.0), limits=WINDOW,
                           ends=(End("voltage", "<=", 0.0), End("step_time", ">=", seconds)))


async def _keithley(faults, seconds=60.0):
    with keithley_server(KEITHLEY_SPEED, faults) as (dev, resource):
        ch = Keithley2450Channel(resource, WallClock(KEITHLEY_SPEED), timeout=0.2, poll_period=1.0)
        await ch.open()
        try:
            return dev, await run_steps(ch, [discharge(seconds)])
        finally:
            await ch.close()


@pytest.mark.parametrize("fault", ["timeout@5", "garble@5", "disconnect@5"])
async def test_keithley_transient_faults_are_retried(fault, caplog):
    caplog.set_level(logging.WARNING)
    dev, [run] = await _keithley((fault,))
    assert run["end"] == 1  # the step ran to its 60 s end
    t = run["columns"]["step_time_second"]
    assert t[-1] >= 60.0 and np.all(np.diff(t) > 0) and len(t) >= 8
    assert any("retry 1 of 3" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fault, message", [
    ("timeout@5+", "gave up after 4 attempts"),
    ("compliance@20", "compliance"),
    ("stuck@20", "stuck"),
])
async def test_keithley_lasting_faults_end_safe_with_one_line(fault, message):
    with keithley_server(KEITHLEY_SPEED, (fault,)) as (dev, resource):
        ch = Keithley2450Channel(resource, WallClock(KEITHLEY_SPEED), timeout=0.2, poll_period=1.0)
        await ch.open()
        with pytest.raises(InstrumentError) as err:
            await run_steps(ch, [discharge(120.0)])
        assert not dev.output and dev.smod == {"CURR": "HIMP", "VOLT": "HIMP"}  # safe: off, relay open
        await ch.close()
    text = str(err.value)
    assert message in text and "\n" not in text and resource in text


async def test_emstat_garbled_packet_is_skipped_and_logged(caplog):
    caplog.set_level(logging.WARNING)
    with emstat_pty(SPEED, ("garble@10",)) as (_dev, port):
        ch = EmStatChannel(port, WallClock(SPEED), interval=1.0)
        await ch.open()
        [run] = await run_steps(ch, [discharge(60.0)])
        await ch.close()
    assert run["end"] == 1 and run["columns"]["step_time_second"][-1] == pytest.approx(60.0, abs=0.01)
    assert any("garbled" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("transport", [emstat_pty, emstat_tcp])
async def test_emstat_silence_or_disconnect_resumes_the_step(transport, caplog):
    caplog.set_level(logging.WARNING)
    fault = "timeout@10" if transport is emstat_pty else "disconnect@10"
    with transport(SPEED, (fault,)) as (dev, port):
        ch = EmStatChannel(port, WallClock(SPEED), interval=1.0, line_timeout=0.3)
        await ch.open()
        [run] = await run_steps(ch, [discharge(60.0)])
        await ch.close()
    t = run["columns"]["step_time_second"]
    assert run["end"] == 1 and len(dev.scripts) >= 2  # the rest of the step ran as a further script
    assert t[-1] >= 59.0 and np.all(np.diff(t) > 0)
    assert any("continuing the step" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fault, message", [("compliance@20", "overload"), ("stuck@20", "stuck")])
async def test_emstat_lasting_faults_abort_with_one_line(fault, message):
    with emstat_pty(SPEED, (fault,)) as (dev, port):
        ch = EmStatChannel(port, WallClock(SPEED), interval=1.0)
        await ch.open()
        with pytest.raises(InstrumentError) as err:
            await run_steps(ch, [discharge(600.0)])
        assert dev._run is not None
        dev._run.join(timeout=2)
        assert not dev._run.is_alive()  # the script was aborted (on_finished: cell_off)
        await ch.close()
    assert message in str(err.value) and "\n" not in str(err.value)
