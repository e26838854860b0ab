"""The Espec chamber driver against the simulated controller on TCP, and SetTemperature steps through
ThermostatChannel: wait for stability while the cell rests, a chamber that never settles is a fault."""

from __future__ import annotations

import pytest
from driverkit import run_steps
from instrument_servers import emstat_pty, espec_server, make_plant

from cyclerctl.clock import WallClock
from cyclerctl.drivers.emstat import EmStatChannel
from cyclerctl.drivers.registry import open_thermostat
from cyclerctl.drivers.thermostat_channel import ThermostatChannel
from cyclerctl.errors import ConfigError, InstrumentError
from cyclerctl.program import End, Record, Rest, SetTemperature

SPEED = 1000.0


async def test_set_and_read_and_refusals():
    with espec_server(SPEED, range_c=(-10.0, 60.0)) as (dev, address):
        chamber = open_thermostat(f"espec:{address}", WallClock(SPEED))
        await chamber.open()
        assert await chamber.read_temperature() == pytest.approx(298.15, abs=0.06)
        await chamber.set_temperature(308.15)
        assert dev.commands[-2:] == ["TEMP, S35.0", "MODE,CONSTANT"]
        with pytest.raises(InstrumentError) as err:  # the controller's own range is narrower
            await chamber.set_temperature(353.15)
        assert "value out of the chamber's range (NA:DATA OUT OF RANGE)" in str(err.value)
        with pytest.raises(ConfigError, match="outside the chamber's range"):  # the envelope
            await chamber.set_temperature(500.0)
        await chamber.safe_state()
        assert dev.mode == "STANDBY"
        await chamber.close()


async def _settle(faults=(), timeout=6 * 3600.0):
    plant = make_plant()
    with espec_server(SPEED, faults, plant=plant) as (dev, address), emstat_pty(SPEED, plant=plant) as (_e, port):
        chamber = open_thermostat(f"espec:{address}", WallClock(SPEED))
        ch = ThermostatChannel(EmStatChannel(port, WallClock(SPEED), interval=5.0), chamber, poll_period=60.0)
        await ch.open()
        assert "temperature" in ch.capabilities.techniques
        steps = [SetTemperature(step_id=0, name="Set 35 degC", temperature=308.15, tolerance=0.5,
                                stable_for=600.0, timeout=timeout, record=Record(every=60.0)),
                 Rest(step_id=1, name="Rest 1 min", ends=(End("step_time", ">=", 60.0),))]
        try:
            return dev, plant, await run_steps(ch, steps)
        finally:
            await ch.close()


async def test_set_temperature_waits_until_stable_while_the_cell_rests():
    dev, plant, (settle, rest) = await _settle()
    cols = settle["columns"]
    t, temp = cols["step_time_second"], cols["temperature_t1_celsius"]
    assert settle["end"] is None and rest["end"] == 0
    assert abs(temp[-1] - 35.0) <= 0.5
    inside = abs(temp - 35.0) <= 0.5
    first_inside = t[inside.argmax()]
    assert t[-1] - first_inside >= 600.0 - 60.0  # stable for stable_for (polled every minute)
    assert t[-1] > 900.0  # the chamber air lags: it took a while
    assert (cols["current_ampere"] == 0).all()  # the cell rested meanwhile
    assert plant.temperature > 306.0  # and the cell followed the chamber


async def test_a_chamber_that_never_settles_is_a_fault():
    with pytest.raises(InstrumentError) as err:
        await _settle(("unstable",), timeout=3600.0)
    assert "did not settle within ±0.5 K of 35.0 degC" in str(err.value)


def test_mecom_frames_match_the_documented_examples():
    from cyclerctl.drivers.meerstetter import decode_value, frame

    assert frame("#", 1, 1, "?VR03E801") == "#010001?VR03E801FF2C"  # read object temperature
    assert frame("#", 1, 2, "?VR04B001") == "#010002?VR04B001D1BB"  # read the stable flag
    assert frame("#", 1, 3, "VS0BB80141C80000") == "#010003VS0BB80141C8000038A1"  # set 25.0 degC
    assert frame("!", 1, 1, "41C40000") == "!01000141C4000051AD"  # reply 24.5 degC
    assert decode_value("41C40000", "float") == 24.5


async def test_peltier_stage_over_mecom_on_a_pty():
    from instrument_servers import meerstetter_pty

    plant = make_plant()
    with meerstetter_pty(SPEED, plant=plant) as (dev, path), emstat_pty(SPEED, plant=plant) as (_e, port):
        tec = open_thermostat(f"meerstetter:{path}", WallClock(SPEED))
        await tec.open()
        assert dev.frames[-1].startswith("#010001?VR270F01")  # asked for the simulated speed
        ch = ThermostatChannel(EmStatChannel(port, WallClock(SPEED), interval=5.0), tec, poll_period=30.0)
        await ch.open()
        [settle] = await run_steps(ch, [SetTemperature(step_id=0, name="Set 40 degC", temperature=313.15,
                                                       tolerance=0.2, stable_for=300.0, record=Record(every=30.0))])
        assert settle["end"] is None and abs(settle["columns"]["temperature_t1_celsius"][-1] - 40.0) <= 0.2
        assert await tec.is_stable()
        await ch.close()
        assert not dev.enabled  # safe state: output stage off
    with pytest.raises(ConfigError, match="TEC stage's range"):
        await tec.set_temperature(400.0)


async def test_settling_on_a_keithley_keeps_time_increasing():
    from instrument_servers import keithley_server

    from cyclerctl.drivers.keithley2450 import Keithley2450Channel

    plant = make_plant()
    with espec_server(SPEED, plant=plant, tau=60.0) as (_c, address), keithley_server(200.0, plant=plant) as (_k, res):
        # a chamber at 1000x and an SMU at 200x would be refused by the engine; here each has its own clock
        chamber = open_thermostat(f"espec:{address}", WallClock(SPEED))
        await chamber.open()
        ch = ThermostatChannel(Keithley2450Channel(res, WallClock(200.0), poll_period=1.0), chamber,
                               poll_period=30.0)
        await ch.channel.open()
        [settle] = await run_steps(ch, [SetTemperature(step_id=0, name="Set 30 degC", temperature=303.15,
                                                       tolerance=0.5, stable_for=60.0, record=Record(every=10.0))])
        await ch.close()
    t = settle["columns"]["test_time_second"]
    assert len(t) > 5 and (t[1:] > t[:-1]).all()  # strictly increasing across the polling chunks
    assert (settle["columns"]["current_ampere"] == 0).all()
