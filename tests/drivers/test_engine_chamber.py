"""The engine drives real thermostats: `cyclerctl run --chamber espec:tcp://...` (and a bench file's
`chamber:` key) against `cyclerctl sim-instrument espec` on TCP and a MeCom stage on a pty, with the
simulated cell. The protocol's temperature step runs on the chamber, the readings are journaled, the
simulated cell follows the chamber; a chamber that never settles or stops answering faults the channel
in one line; real hardware only at --speed 1, a simulated chamber only at the run's --speed."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys

import numpy as np
from instrument_servers import espec_server, meerstetter_pty

from cyclerctl.cli import main

SPEED = 200.0
PROTOCOL = (
    "cyclerctl: 1\nname: Warm up and rest\n"
    "cell: {name: hc, active_mass: 3.4 mg, area: 1.131 cm^2, nominal_specific_capacity: 300 mAh/g}\n"
    "safety: {voltage: [-0.05 V, 3.0 V], current: 5 mA, temperature: [0 degC, 60 degC]}\n"
    "record: {every: 30 s}\n"
    "steps:\n"
    "  - Rest for 1 minute\n"
    "  - temperature: {set: 35 degC, within: 0.5 K, stable_for: 10 min, timeout: TIMEOUT}\n"
    "  - Rest for 10 minutes\n")


def protocol(tmp_path, timeout: str = "2 h"):
    p = tmp_path / "warm.yaml"
    p.write_text(PROTOCOL.replace("TIMEOUT", timeout))
    return p


@contextlib.contextmanager
def sim_espec(*args: str):
    """`cyclerctl sim-instrument espec` as a user starts it: its own process, TCP on loopback."""
    proc = subprocess.Popen([sys.executable, "-m", "cyclerctl.cli", "sim-instrument", "espec", "--port", "0",
                             "--speed", f"{SPEED:g}", "--for", "300", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        spec = proc.stdout.readline().strip()
        assert spec.startswith("espec:tcp://127.0.0.1:"), proc.stderr.read()
        yield spec
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def journal(run_dir):
    with sqlite3.connect(run_dir / "journal.sqlite") as db:
        rows = np.array(db.execute("SELECT step_count, step_time_second, temperature_t1_celsius, current_ampere "
                                   "FROM samples ORDER BY seq").fetchall(), dtype=float)
        events = [(k, json.loads(d)) for k, d in db.execute("SELECT kind, data FROM events ORDER BY seq")]
    return rows, events


def run(tmp_path, *args: str) -> int:
    return main(["run", *args, "--out", str(tmp_path / "run"), "--no-metrics"])


def test_run_with_an_espec_chamber_on_tcp(tmp_path):
    with sim_espec() as spec:
        code = run(tmp_path, str(protocol(tmp_path)), "-i", "sim:hard_carbon", "--chamber", spec,
                   "--speed", f"{SPEED:g}", "--no-noise")
    assert code == 0
    rows, events = journal(tmp_path / "run")
    step, st, temp, current = rows.T
    settle, after = step == 2, step == 3
    assert [d["technique"] for k, d in events if k == "step_start"] == ["rest", "temperature", "rest"]
    # the chamber readings: from room temperature up to the set point, held within 0.5 K for 10 min
    assert temp[settle][0] < 27.0 and abs(temp[settle][-1] - 35.0) <= 0.5
    inside = np.abs(temp[settle] - 35.0) <= 0.5
    assert st[settle][-1] - st[settle][inside.argmax()] >= 600.0 - 60.0
    assert st[settle][-1] > 900.0  # the air lags: settling took a while
    assert np.all(current[settle] == 0.0)  # the cell rested meanwhile
    # the simulated cell followed the chamber (its own temperature, with its thermal lag)
    assert np.all(np.diff(temp[after]) >= -1e-9) and 33.5 < temp[after][-1] <= 35.5
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["channels"][0]["chamber"] == spec and info["status"] == "complete"


def test_a_chamber_that_never_settles_faults_the_channel_in_one_line(tmp_path, capsys):
    with sim_espec("--fault", "unstable") as spec:
        code = run(tmp_path, str(protocol(tmp_path, timeout="30 min")), "-i", "sim:hard_carbon",
                   "--chamber", spec, "--speed", f"{SPEED:g}", "--no-noise")
    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not settle within ±0.5 K of 35.0 degC in 1800 s" in err[0]
    _rows, events = journal(tmp_path / "run")
    fault = [d for k, d in events if k == "fault"]
    assert fault and fault[0]["kind"] == "instrument" and events[-1] == ("run_end", {"status": "faulted"})


def test_a_chamber_that_stops_answering_faults_the_channel(tmp_path, capsys):
    with sim_espec("--fault", "timeout@4+") as spec:  # from the 4th reading on: silence
        code = run(tmp_path, str(protocol(tmp_path)), "-i", "sim:hard_carbon", "--chamber", spec,
                   "--speed", f"{SPEED:g}", "--no-noise")
    assert code == 3
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]  # (retries are warnings)
    assert len(err) == 1 and "no reply within 2 s (gave up after 4 attempts)" in err[0] and "TEMP?" in err[0]
    rows, events = journal(tmp_path / "run")
    assert len(rows) > 0 and [d["kind"] for k, d in events if k == "fault"] == ["instrument"]


def test_speed_rules_for_simulated_and_real_chambers(tmp_path, capsys):
    with sim_espec() as spec:
        assert run(tmp_path, str(protocol(tmp_path)), "--chamber", spec, "--speed", "100") == 2
        assert "runs at --speed 200 but this run at 100" in capsys.readouterr().err
        assert run(tmp_path, str(protocol(tmp_path)), "--chamber", spec) == 2  # --speed max: simulated time
        assert "runs at --speed 200 but this run at max; start both with the same --speed" in capsys.readouterr().err
    from cyclerctl.clock import WallClock
    from cyclerctl.sim.instruments.espec import SimEspec
    from cyclerctl.sim.instruments.transport import TcpServer

    dev = SimEspec(WallClock(1.0))

    def handler(line, link):  # a controller without the simulator's identification
        if line.strip() == "ROM?":
            link.write(b"P-300 VER 1.00\r\n")
        else:
            dev.on_line(line, link)

    server = TcpServer(handler).start()
    try:
        server_spec = f"espec:tcp://127.0.0.1:{server.port}"
        assert run(tmp_path, str(protocol(tmp_path)), "--chamber", server_spec, "--speed", "50") == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: channel ch1: the chamber {server_spec} is real hardware; it runs only at --speed 1"
    finally:
        server.stop()


def test_bad_chamber_options_are_one_line_errors(tmp_path, capsys):
    p = str(protocol(tmp_path))
    assert run(tmp_path, p, "--chamber", "binder:COM3") == 2
    assert "unknown chamber 'binder'" in capsys.readouterr().err
    assert run(tmp_path, p, "--chamber", "espec:") == 2
    assert "needs an address" in capsys.readouterr().err
    assert run(tmp_path, p, "-i", "keithley2450:TCPIP0::127.0.0.1::1::SOCKET", "--chamber", "sim") == 2
    assert "built-in chamber" in capsys.readouterr().err


def test_bench_channels_share_one_chamber_and_its_lock(tmp_path):
    from cyclerctl.engine.bench import load_bench
    from cyclerctl.engine.session import ChannelPlan, RunSettings, Session
    from cyclerctl.protocol import compile_file

    p = protocol(tmp_path)
    with espec_server(SPEED) as (dev, address):
        bench = tmp_path / "rack.yaml"
        bench.write_text(f"defaults: {{instrument: sim:hard_carbon, protocol: {p.name}, chamber: espec:{address}, "
                         f"noise: false}}\nchannels:\n  - name: A1\n  - name: A2\n    seed: 3\n")
        b = load_bench(bench)
        assert [c.chamber for c in b.channels] == [f"espec:{address}"] * 2
        program = compile_file(p)
        session = Session.create([ChannelPlan(c.name, program, c.instrument, {"noise": False}, str(p), "", c.chamber)
                                  for c in b.channels], RunSettings(speed=SPEED), tmp_path / "bench_run")
        a1, a2 = (session.runners[n].channel for n in ("A1", "A2"))
        assert a1.thermostat is a2.thermostat and a1.thermostat.users == 2  # one chamber, one lock
        import asyncio

        assert asyncio.run(session.execute()) == {"A1": "done", "A2": "done"}
        assert dev.mode == "STANDBY"  # released by the last channel
        assert dev.commands.count("ROM?") == 2  # identified once before the run, opened once
    for ch in ("A1", "A2"):
        with sqlite3.connect(tmp_path / "bench_run" / "journal.sqlite") as db:
            t = db.execute("SELECT temperature_t1_celsius FROM samples WHERE ch = ? AND step_count = 2 "
                           "ORDER BY seq DESC LIMIT 1", (ch,)).fetchone()[0]
        assert abs(t - 35.0) <= 0.5


def test_run_with_a_peltier_stage_over_mecom(tmp_path):
    with meerstetter_pty(SPEED) as (dev, path):
        code = run(tmp_path, str(protocol(tmp_path)), "-i", "sim:hard_carbon", "--chamber", f"meerstetter:{path}",
                   "--speed", f"{SPEED:g}", "--no-noise")
        assert code == 0 and not dev.enabled  # output stage off at the end
    rows, _events = journal(tmp_path / "run")
    step, st, temp, _i = rows.T
    assert abs(temp[step == 2][-1] - 35.0) <= 0.5
    assert st[step == 2][-1] < 900.0  # a Peltier stage settles much faster than chamber air
    assert temp[step == 3][-1] > 33.5  # and the cell follows it


async def test_a_paused_channel_gives_its_chamber_the_set_point_back_on_resume():
    from driverkit import run_steps

    from cyclerctl.clock import WallClock
    from cyclerctl.drivers.registry import open_thermostat
    from cyclerctl.drivers.thermostat_channel import ThermostatChannel
    from cyclerctl.program import End, Record, Rest, SetTemperature
    from cyclerctl.sim.channel import SimChannel

    with espec_server(1000.0, tau=60.0) as (dev, address):
        clock = WallClock(1000.0)
        ch = ThermostatChannel(SimChannel("hard_carbon", clock=clock, noise=False),
                               open_thermostat(f"espec:{address}", clock))
        await ch.open()
        await run_steps(ch, [SetTemperature(step_id=0, name="Set 30 degC", temperature=303.15, tolerance=0.5,
                                            stable_for=120.0, record=Record(every=60.0))])
        await ch.safe_state()  # what the engine does on pause
        assert dev.mode == "STANDBY"
        [rest] = await run_steps(ch, [Rest(step_id=1, name="Rest", ends=(End("step_time", ">=", 120.0),))])
        assert dev.mode == "CONSTANT" and dev.setpoint == 303.15
        assert 27.0 < rest["columns"]["temperature_t1_celsius"][-1] < 30.5  # the cell warms on (its own lag)
        await ch.close()
        assert dev.mode == "STANDBY"


def test_variable_temperature_eis_through_the_engine(tmp_path):
    """EmStat (pty) + Espec (TCP), both simulated on one cell, run by the engine with the live analysis:
    the EIS rows carry the chamber's temperature and the Arrhenius row gives the preset's charge-transfer
    activation energy (13.94 kJ/mol, hard_carbon)."""
    import asyncio

    from instrument_servers import emstat_pty, make_plant

    from cyclerctl.engine.session import ChannelPlan, RunSettings, Session
    from cyclerctl.protocol import compile_file

    p = tmp_path / "vt.yaml"
    p.write_text(
        "cyclerctl: 1\nname: VT EIS\n"
        "cell: {name: hc, active_mass: 3.4 mg, area: 1.131 cm^2, nominal_specific_capacity: 300 mAh/g}\n"
        "safety: {voltage: [-0.05 V, 3.0 V], current: 5 mA, temperature: [0 degC, 60 degC]}\n"
        "record: {every: 300 s}\n"
        "steps:\n"
        "  - for_each: {temperature: [15, 25, 35, 45], unit: degC}\n"
        "    steps:\n"
        "      - temperature: {set: $temperature, within: 0.3 K, stable_for: 20 min, timeout: 4 h}\n"
        "      - eis: {bias: ocv, amplitude: 5 mV, from: 100 kHz, to: 100 mHz, per_decade: 8}\n")
    speed = 2000.0
    plant = make_plant()
    with espec_server(speed, plant=plant) as (_c, address), emstat_pty(speed, plant=plant) as (_e, port):
        session = Session.create([ChannelPlan("ch1", compile_file(p), f"emstat:{port}", {}, str(p), "",
                                              f"espec:{address}")], RunSettings(speed=speed), tmp_path / "vt_run")
        assert asyncio.run(session.execute()) == {"ch1": "done"}
    with sqlite3.connect(tmp_path / "vt_run" / "journal.sqlite") as db:
        rows = [(k, json.loads(d)) for k, d in db.execute("SELECT kind, data FROM metrics ORDER BY seq")]
    eis = [d for k, d in rows if k == "eis"]
    assert [round(d["temperature_kelvin"] - 273.15) for d in eis] == [15, 25, 35, 45]
    arr = [d for k, d in rows if k == "arrhenius"][-1]
    assert abs(arr["activation_energy_kj_mol"] - 13.94) <= 1.0, arr["activation_energy_kj_mol"]


def test_pause_and_crash_resume_give_the_chamber_its_set_point_back(tmp_path):
    """Pause during the temperature step (the chamber goes to standby with the channel), resume; then an
    interruption during the next rest and `Session.resume`: the chamber gets its set point again."""
    import asyncio

    from cyclerctl.engine.session import ChannelPlan, RunSettings, Session
    from cyclerctl.engine.states import State
    from cyclerctl.program import SetTemperature
    from cyclerctl.protocol import compile_file

    p = protocol(tmp_path)
    run_dir = tmp_path / "paused"

    async def until(cond, timeout=60.0):
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.005)

    async def scenario(dev, spec):
        session = Session.create([ChannelPlan("ch1", compile_file(p), "sim:hard_carbon", {"noise": False}, str(p),
                                              "", spec)], RunSettings(speed=1000.0), run_dir)
        task = asyncio.create_task(session.execute())
        r = session.runners["ch1"]
        await until(lambda: isinstance(r.current_step, SetTemperature) and r.es.step_time > 120.0)
        assert (await session.control.pause("ch1"))[0]
        await until(lambda: r.sm.state == State.PAUSED)
        assert dev.mode == "STANDBY"
        assert (await session.control.resume("ch1"))[0]
        await until(lambda: r.es.step_count == 3 and r.es.step_time > 60.0)
        assert dev.mode == "CONSTANT"
        task.cancel()  # the process is interrupted in the rest after the temperature step
        with contextlib.suppress(asyncio.CancelledError):
            await task
        session.journal.close()
        assert dev.mode == "STANDBY"
        resumed = Session.resume(run_dir)
        assert await resumed.execute() == {"ch1": "done"}

    with espec_server(1000.0, tau=60.0) as (dev, address):
        asyncio.run(scenario(dev, f"espec:{address}"))
        assert dev.commands.count("TEMP, S35.0") == 3  # set, again after the pause, again after the resume
        assert dev.commands[-1] == "MODE,STANDBY"
    rows, events = journal(run_dir)
    kinds = [k for k, _d in events]
    assert "pause" in kinds and "resume" in kinds and kinds[-1] == "run_end"
    settle = rows[rows[:, 0] == 2]
    assert np.all(np.diff(settle[:, 1]) > 0)  # the step's time continues across the pause
    assert abs(settle[-1, 2] - 35.0) <= 0.5
