"""The same GCD protocol on three paths — the simulated channel in process, the Keithley 2450 driver over
pyvisa-py TCP to the simulated Keithley, the EmStat driver over a pseudo-terminal to the simulated
EmStat — all with the same cell model: capacities agree within 0.5 %, voltage curves within 2 mV RMS."""

from __future__ import annotations

import math

import pytest
from driverkit import rms_difference, run_steps, step_charge
from instrument_servers import emstat_pty, keithley_server

from cyclerctl.clock import VirtualClock, WallClock
from cyclerctl.drivers.emstat import EmStatChannel
from cyclerctl.drivers.keithley2450 import Keithley2450Channel
from cyclerctl.program import ConstantCurrent, End, Limits, Record, Rest

SPEED = 1000.0  # the EmStat runs its loops on the instrument: latency does not matter
KEITHLEY_SPEED = 400.0  # host-stepped: one round trip of wall latency is SPEED x as long in cell time
I_1C = 1.02e-3  # A, 1C of the hard_carbon preset cell (3.4 mg x 300 mAh/g)
SAFETY = Limits(voltage_min=-0.05, voltage_max=3.0, current_max=5e-3)


def gcd_steps():
    rec = Record(every=2.0)
    return [
        ConstantCurrent(step_id=0, name="Discharge at 1C until 0.005 V", current=-I_1C, direction=-1,
                        ends=(End("voltage", "<=", 0.005, label="until 0.005 V"),), record=rec, limits=SAFETY),
        Rest(step_id=1, name="Rest for 2 min", ends=(End("step_time", ">=", 120.0),), record=rec, limits=SAFETY),
        ConstantCurrent(step_id=2, name="Charge at 1C until 1.5 V", current=I_1C, direction=1,
                        ends=(End("voltage", ">=", 1.5, label="until 1.5 V"),), record=rec, limits=SAFETY),
    ]


async def _sim_path():
    from cyclerctl.sim.channel import SimChannel

    ch = SimChannel("hard_carbon", clock=VirtualClock(), noise=False)
    await ch.open()
    try:
        return await run_steps(ch, gcd_steps())
    finally:
        await ch.close()


async def _keithley_path():
    with keithley_server(KEITHLEY_SPEED) as (_dev, resource):
        ch = Keithley2450Channel(resource, WallClock(KEITHLEY_SPEED), poll_period=0.2)
        await ch.open()
        try:
            return await run_steps(ch, gcd_steps())
        finally:
            await ch.close()


async def _emstat_path():
    with emstat_pty(SPEED) as (_dev, port):
        ch = EmStatChannel(port, WallClock(SPEED), interval=1.0)
        await ch.open()
        try:
            return await run_steps(ch, gcd_steps())
        finally:
            await ch.close()


@pytest.fixture(scope="module")
def sim_run():
    import asyncio

    return asyncio.run(_sim_path())


def _compare(ref, run, name):
    for k in (0, 2):
        q_ref, q = step_charge(ref[k]["columns"]), step_charge(run[k]["columns"])
        assert q_ref > 1.0  # a real discharge (C): the test is not vacuous
        assert run[k]["end"] == 0, f"{name}: step {k} ended by {run[k]['end']}"
        assert math.isclose(q, q_ref, rel_tol=0.005), f"{name}: step {k} capacity {q:.5g} C vs {q_ref:.5g} C"
        rms = rms_difference(ref[k]["columns"], run[k]["columns"])
        assert rms < 2e-3, f"{name}: step {k} voltage RMS difference {rms * 1e3:.2f} mV"
    assert run[1]["end"] == 0


def test_sim_path_fires_the_cutoffs(sim_run):
    assert [r["end"] for r in sim_run] == [0, 0, 0]
    assert sim_run[0]["columns"]["voltage_volt"][-1] <= 0.005 + 1e-4


async def test_keithley_over_tcp_matches_sim_channel(sim_run):
    run = await _keithley_path()
    _compare(sim_run, run, "keithley2450")
    v = run[0]["columns"]["voltage_volt"]
    assert v[-1] <= 0.005 and v[-1] > -0.01  # the cutoff is caught within one reading


async def test_emstat_over_pty_matches_sim_channel(sim_run):
    run = await _emstat_path()
    _compare(sim_run, run, "emstat")


def gitt_steps(pulses: int = 3):
    """GITT as the compiler emits it: constant-current pulses, each followed by a rest."""
    steps = []
    for k in range(pulses):
        steps.append(ConstantCurrent(step_id=2 * k, name=f"pulse {k + 1}", current=-0.1 * I_1C, direction=-1,
                                     technique="gitt", ends=(End("step_time", ">=", 120.0),),
                                     record=Record(every=5.0), limits=SAFETY))
        steps.append(Rest(step_id=2 * k + 1, name=f"relax {k + 1}", technique="gitt",
                          ends=(End("step_time", ">=", 240.0),), record=Record(every=5.0), limits=SAFETY))
    return steps


async def test_gitt_on_the_keithley_relaxes_like_the_sim_channel():
    from cyclerctl.sim.channel import SimChannel

    direct = SimChannel("hard_carbon", clock=VirtualClock(), noise=False)
    await direct.open()
    ref = await run_steps(direct, gitt_steps())
    with keithley_server(KEITHLEY_SPEED) as (_dev, resource):
        ch = Keithley2450Channel(resource, WallClock(KEITHLEY_SPEED), poll_period=0.5)
        await ch.open()
        run = await run_steps(ch, gitt_steps())
        await ch.close()
    assert [r["end"] for r in run] == [0] * len(run)
    for k in range(1, len(run), 2):  # the relaxed (quasi-equilibrium) voltage after each pulse
        v_ref, v = ref[k]["columns"]["voltage_volt"][-1], run[k]["columns"]["voltage_volt"][-1]
        assert abs(v - v_ref) < 2e-3, f"relaxation {k // 2 + 1}: {v:.4f} V vs {v_ref:.4f} V"
    steps_down = [run[k]["columns"]["voltage_volt"][-1] for k in range(1, len(run), 2)]
    assert steps_down[0] > steps_down[1] > steps_down[2]  # each pulse sodiates further


async def test_cv_sweep_on_three_paths():
    """A slow CV (2 mV/s, 1.0 -> 0.6 -> 1.0 V): the staircase of the Keithley and the EmStat's
    meas_loop_cv give the sim channel's current away from the switching transient."""
    import numpy as np

    from cyclerctl.program import Sweep

    step = Sweep(step_id=0, name="CV 2 mV/s", start=1.0, vertices=(0.6, 1.0), scan_rate=2e-3,
                 record=Record(every=5.0), limits=SAFETY)
    from cyclerctl.sim.channel import SimChannel

    direct = SimChannel("hard_carbon", clock=VirtualClock(), noise=False)
    await direct.open()
    [ref] = await run_steps(direct, [step])
    with emstat_pty(SPEED) as (_d, port):
        ch = EmStatChannel(port, WallClock(SPEED))
        await ch.open()
        [em] = await run_steps(ch, [step])
        await ch.close()
    with keithley_server(100.0) as (_d, resource):  # host-stepped stairs of 1 s: 10 ms of wall time each
        ch = Keithley2450Channel(resource, WallClock(100.0), sweep_step=2e-3)
        await ch.open()
        [kt] = await run_steps(ch, [step])
        await ch.close()
    probe = np.array([50.0, 100.0, 150.0, 240.0, 360.0, 390.0])
    i_ref = np.interp(probe, ref["columns"]["step_time_second"], ref["columns"]["current_ampere"])
    assert np.all(np.abs(i_ref) > 1e-4)
    for name, run in (("emstat", em), ("keithley2450", kt)):
        cols = run["columns"]
        assert run["end"] is None and set(np.unique(cols["sweep_segment"])) == {0.0, 1.0}
        i = np.interp(probe, cols["step_time_second"], cols["current_ampere"])
        np.testing.assert_allclose(i, i_ref, rtol=0.03, atol=2e-5, err_msg=name)  # atol: 1 % of the peak
