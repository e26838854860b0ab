"""`cyclerctl sim-instrument` as a user starts it (a separate process on a real transport), the registry
specs, and EIS through the EmStat against the in-process simulated channel."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from driverkit import run_steps
from instrument_servers import emstat_pty

from cyclerctl.clock import VirtualClock, WallClock
from cyclerctl.drivers.emstat import EmStatChannel
from cyclerctl.drivers.registry import open_channel
from cyclerctl.errors import ConfigError
from cyclerctl.program import ConstantCurrent, End, Impedance, Record


@pytest.fixture(scope="module")
def sim_instruments():
    """`cyclerctl sim-instrument` processes, as a user starts them: a Keithley on TCP, an EmStat on a pty."""
    procs, specs = [], {}
    try:
        kinds = (["keithley2450"], ["emstat", "--pty"])
        for kind in kinds:  # started side by side
            procs.append(subprocess.Popen([sys.executable, "-m", "cyclerctl.cli", "sim-instrument", *kind,
                                           "--speed", "100", "--for", "120"],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for kind, proc in zip(kinds, procs, strict=True):
            spec = proc.stdout.readline().strip()
            assert spec, proc.stderr.read()
            specs[kind[0]] = spec
        yield specs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
            assert proc.returncode == 0


@pytest.mark.parametrize("kind", ["keithley2450", "emstat"])
async def test_sim_instrument_command_serves_the_driver(sim_instruments, kind):
    ch = open_channel(sim_instruments[kind], WallClock(100.0))
    assert not ch.capabilities.real_hardware  # known before open(): the engine then accepts --speed 100
    await ch.open()
    step = ConstantCurrent(step_id=0, name="d", current=-1e-3, record=Record(every=2.0),
                           ends=(End("step_time", ">=", 20.0),))
    [run] = await run_steps(ch, [step])
    await ch.close()
    assert run["end"] == 0 and run["columns"]["step_time_second"][-1] >= 20.0
    assert np.all(run["columns"]["voltage_volt"] < 1.3)


async def test_speed_mismatch_is_refused_in_one_line(sim_instruments):
    ch = open_channel(sim_instruments["keithley2450"], WallClock(10.0))
    with pytest.raises(ConfigError, match="--speed 100 but this run at 10"):
        await ch.open()


def test_bad_specs_and_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="needs a VISA resource"):
        open_channel("keithley2450:", WallClock(1.0))
    with pytest.raises(ConfigError, match="unknown instrument"):
        open_channel("gamry:COM3", WallClock(1.0))
    out = subprocess.run([sys.executable, "-m", "cyclerctl.cli", "sim-instrument", "espec", "--pty"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: --pty is for emstat and meerstetter")
    assert len(out.stderr.strip().splitlines()) == 1


async def test_eis_through_emstat_matches_the_direct_path():
    from cyclerctl.sim.channel import SimChannel

    step = Impedance(step_id=0, name="EIS at OCV", freq_start=1e5, freq_stop=1e-2, points_per_decade=6,
                     amplitude=5e-3)
    direct = SimChannel("hard_carbon", clock=VirtualClock(), noise=False)
    await direct.open()
    [ref] = await run_steps(direct, [step])
    with emstat_pty(2000.0) as (_dev, port):
        ch = EmStatChannel(port, WallClock(2000.0))
        await ch.open()
        [run] = await run_steps(ch, [step])
        await ch.close()
    f_ref, f = ref["columns"]["frequency_hertz"], run["columns"]["frequency_hertz"]
    assert len(f) == len(step.frequencies()) == len(f_ref)
    np.testing.assert_allclose(f, f_ref, rtol=1e-5)
    z_ref = ref["columns"]["real_impedance_ohm"] + 1j * ref["columns"]["imaginary_impedance_ohm"]
    z = run["columns"]["real_impedance_ohm"] + 1j * run["columns"]["imaginary_impedance_ohm"]
    assert np.all(z_ref.imag[-5:] < 0)  # capacitive/diffusive tail: the arrays are not trivial
    np.testing.assert_allclose(np.abs(z - z_ref) / np.abs(z_ref), 0.0, atol=5e-3)


def test_cyclerctl_run_on_the_simulated_keithley(sim_instruments, tmp_path):
    """The whole stack as a user runs it: `cyclerctl run --instrument keithley2450:... --speed 100`."""
    import sqlite3

    from cyclerctl.cli import main

    protocol = tmp_path / "short.yaml"
    protocol.write_text(
        "cyclerctl: 1\nname: Short GCD on a SourceMeter\n"
        "cell: {name: hc, active_mass: 3.4 mg, area: 1.131 cm^2, nominal_specific_capacity: 300 mAh/g}\n"
        "safety: {voltage: [-0.05 V, 3.0 V], current: 5 mA}\n"
        "record: {every: 10 s}\n"
        "steps:\n  - Rest for 30 seconds\n  - Discharge at 1C for 3 minutes\n  - Rest for 1 minute\n")
    run_dir = tmp_path / "run"
    code = main(["run", str(protocol), "--instrument", sim_instruments["keithley2450"], "--speed", "100",
                 "--out", str(run_dir), "--no-metrics"])
    assert code == 0
    with sqlite3.connect(run_dir / "journal.sqlite") as db:
        rows = db.execute("SELECT step_count, current_ampere, voltage_volt FROM samples ORDER BY seq").fetchall()
        kinds = [k for (k,) in db.execute("SELECT kind FROM events ORDER BY seq")]
    assert {r[0] for r in rows} == {1, 2, 3}
    currents = {r[0]: r[1] for r in rows}
    assert currents[1] == 0.0 and currents[2] == pytest.approx(-1.02e-3) and currents[3] == 0.0
    assert kinds[0] == "run_start" and kinds[-1] == "run_end" and "fault" not in kinds
