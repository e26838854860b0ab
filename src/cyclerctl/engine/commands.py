"""CLI commands of the engine: demo, run, resume, export."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path

import typer
from rich.console import Console

from ..errors import ConfigError, CyclerError, JournalError
from ..paths import resolve_data_file
from .session import ChannelPlan, RunSettings, Session, parse_speed

DEMO_PROTOCOL = "demo_hard_carbon"
DEMO_PRESET = "hard_carbon"


def _protocol_path(value: str) -> Path:
    try:
        return resolve_data_file(value, "protocols")
    except FileNotFoundError:
        return Path(value)


def _compile(protocol: str, cell: str | None, overrides: dict | None = None):
    from ..protocol import compile_file

    path = _protocol_path(protocol)
    return compile_file(path, cell, overrides or None), path


def _sim_options(instrument: str, seed: int | None, noise: bool) -> dict:
    if not instrument.lower().startswith("sim"):
        return {}
    opts: dict = {"noise": noise}
    if seed is not None:
        opts["seed"] = seed
    return opts


def _mqtt_mode(value: str | None, default: str) -> str:
    v = (value or default).strip()
    if v.lower() in ("off", "embedded"):
        return v.lower()
    if not v.startswith(("mqtt://", "mqtts://", "ws://", "wss://")):
        raise ConfigError(f"--mqtt must be off, embedded or a broker URL like mqtt://127.0.0.1:1883, not {v!r}")
    return v


def _logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


async def _execute(session: Session, console: Console, *, metric_lines: bool, announce_mqtt: bool) -> float:
    from .display import Progress, summary

    progress = Progress(session, console, metric_lines=metric_lines)
    done = asyncio.Event()
    t0 = time.monotonic()

    async def body():
        try:
            return await session.execute()
        finally:
            done.set()

    shown = asyncio.create_task(progress.run(done))
    task = asyncio.create_task(body())
    if announce_mqtt:
        while not task.done() and session.mqtt_url is None and session.settings.mqtt != "off":
            await asyncio.sleep(0.02)
        if session.mqtt_url:
            console.print(f"MQTT broker listening on {session.mqtt_url} — topics cycler/v1/"
                          f"{session.settings.node}/#", highlight=False, markup=False)
    try:
        await task
    finally:
        done.set()
        await shown
    wall = time.monotonic() - t0
    summary(session, console, wall, progress.metrics_seen)
    return wall


def _finish(session: Session) -> None:
    """Exit status: journal failure -> its one-line error; a faulted channel -> exit code 3."""
    if session.journal.failed is not None:
        raise session.journal.failed
    faulted = {ch: r.es.fault for ch, r in session.runners.items() if r.es.status == "faulted"}
    if faulted:
        ch, msg = next(iter(faulted.items()))
        more = f" (and {len(faulted) - 1} more channel(s))" if len(faulted) > 1 else ""
        raise _ChannelFault(f"channel {ch} faulted: {msg}{more}; data are in {session.run_dir}")


class _ChannelFault(CyclerError):
    exit_code = 3


def _run_session(session: Session, *, metric_lines: bool, announce_mqtt: bool = False) -> None:
    console = Console()
    try:
        asyncio.run(_execute(session, console, metric_lines=metric_lines, announce_mqtt=announce_mqtt))
    except KeyboardInterrupt:
        console.print(f"interrupted: the channels are in their safe state; continue with "
                      f"`cyclerctl resume {session.run_dir}`", highlight=False, markup=False)
        raise typer.Exit(130) from None
    _finish(session)


def run(
    protocol: str = typer.Argument(None, help="Protocol file (or the name of a shipped protocol)."),
    cell: str | None = typer.Option(None, "--cell", help="Cell file (same keys as the protocol's cell block)."),
    instrument: str = typer.Option("sim", "--instrument", "-i",
                                   help="sim, sim:PRESET, keithley2450:RESOURCE or emstat:PORT."),
    chamber: str | None = typer.Option(
        None, "--chamber",
        help="Chamber for the protocol's temperature steps: espec:tcp://HOST:PORT, espec:/dev/ttyUSB0, "
             "meerstetter:PORT (a serial port or tcp://HOST:PORT), or sim (the simulator's built-in chamber, "
             "the default with -i sim). Real hardware runs only at --speed 1; a simulated chamber "
             "(cyclerctl sim-instrument espec) at the run's --speed."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default runs/DATE_NAME)."),
    speed: str = typer.Option("max", "--speed", help="'max' (simulated time, as fast as possible) or N x real time."),
    mqtt: str | None = typer.Option(None, "--mqtt", help="off (default), embedded, or a broker URL mqtt://host:port."),
    node: str = typer.Option("cyclerctl", "--node", help="MQTT node name (topic cycler/v1/NODE/...)."),
    seed: int | None = typer.Option(None, "--seed", help="Simulator noise seed."),
    no_noise: bool = typer.Option(False, "--no-noise", help="Simulator without instrument noise."),
    bench: Path | None = typer.Option(None, "--bench", help="Bench file: many channels, each with instrument, "
                                                            "cell and protocol."),
    channel: str = typer.Option("ch1", "--channel", help="Channel name (single-channel runs)."),
    commit_interval: float = typer.Option(1.0, "--commit-interval", help="Seconds of wall time between journal "
                                                                           "commits (at most 1)."),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="Print metric lines as they appear."),
) -> None:
    """Run a protocol on a cell: live progress, journal, exports at the end.

    Examples: cyclerctl run hc_formation_cycling --instrument sim:hard_carbon --speed max;
    cyclerctl run snhc_eis_temperature -i emstat:/dev/ttyACM0 --chamber espec:tcp://10.0.0.7:10001 --speed 1"""
    _logging()
    if chamber is not None and bench is not None:
        raise ConfigError("--chamber is for single-channel runs; in a bench file give each channel (or the "
                          "defaults) a 'chamber:' key")
    if chamber is not None:
        chamber = chamber.strip()
        if chamber.lower() != "sim":
            from ..drivers.registry import check_thermostat_spec

            check_thermostat_spec(chamber)
    if not 0 < commit_interval <= 1.0:
        raise ConfigError("--commit-interval must be > 0 and at most 1 s")
    settings = RunSettings(speed=parse_speed(speed), mqtt=_mqtt_mode(mqtt, "off"), node=node,
                           commit_interval=commit_interval)
    plans = []
    if bench is not None:
        from .bench import load_bench

        b = load_bench(bench)
        if b.node and node == "cyclerctl":
            settings.node = b.node
        for c in b.channels:
            program, path = _compile(c.protocol, c.cell, c.overrides)
            opts = _sim_options(c.instrument, c.options.get("seed", seed), c.options.get("noise", not no_noise))
            plans.append(ChannelPlan(c.name, program, c.instrument, opts, str(path), c.cell or "", c.chamber or ""))
    else:
        if not protocol:
            raise ConfigError("give a PROTOCOL (file or shipped name) or --bench BENCH.yaml")
        program, path = _compile(protocol, cell)
        plans.append(ChannelPlan(channel, program, instrument, _sim_options(instrument, seed, not no_noise),
                                 str(path), cell or "", chamber or ""))
    session = Session.create(plans, settings, out)
    _run_session(session, metric_lines=metrics, announce_mqtt=settings.mqtt == "embedded")


def resume(
    run_dir: Path = typer.Argument(..., help="The run directory to continue."),
    speed: str | None = typer.Option(None, "--speed", help="Override the run's speed ('max' or N)."),
    mqtt: str | None = typer.Option(None, "--mqtt", help="Override MQTT: off, embedded or a broker URL."),
    continue_paused: bool = typer.Option(False, "--continue-paused",
                                         help="Also continue channels that were paused when the run stopped."),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="Print metric lines as they appear."),
) -> None:
    """Continue a run after a crash or power loss: same step, same counters, data continuous.

    Example: cyclerctl resume runs/20261122-031500_hard-carbon-demo"""
    _logging()
    from .session import read_run_json

    info = read_run_json(run_dir)
    settings = RunSettings.from_json(info.get("settings", {}))
    if speed is not None:
        settings.speed = parse_speed(speed)
    if mqtt is not None:
        settings.mqtt = _mqtt_mode(mqtt, "off")
    if info.get("status") in ("complete", "stopped", "aborted"):
        raise ConfigError(f"{run_dir}: the run already ended ({info['status']}); nothing to resume")
    session = Session.resume(run_dir, settings=settings, continue_paused=continue_paused)
    _run_session(session, metric_lines=metrics, announce_mqtt=settings.mqtt == "embedded")


def export(
    run_dir: Path = typer.Argument(..., help="The run directory."),
    format: str = typer.Option("bdf-parquet,bdf-csv", "--format", "-f",
                               help="bdf-parquet, bdf-csv, or both comma-separated."),
    machine_names: bool = typer.Option(False, "--machine-names",
                                       help="Column headers as BDF machine names (test_time_second, ...) "
                                            "instead of preferred labels (Test Time / s, ...)."),
) -> None:
    """Export a run's journal: BDF Parquet/CSV per channel with a metadata sidecar, metric tables in
    RUN_DIR/metrics/. Example: cyclerctl export runs/X --format bdf-parquet"""
    from ..store.export import export_run, parse_formats

    files = export_run(run_dir, formats=parse_formats(format), labels=not machine_names)
    for f in files:
        typer.echo(str(f))


def demo(
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default runs/DATE_demo...)."),
    mqtt: str | None = typer.Option(None, "--mqtt", help="Broker URL, embedded (default) or off."),
    speed: str = typer.Option("max", "--speed", help="'max' (default) or N x real time."),
    seed: int = typer.Option(0, "--seed", help="Simulator noise seed."),
    no_noise: bool = typer.Option(False, "--no-noise", help="Simulator without instrument noise."),
    protocol: str = typer.Option(DEMO_PROTOCOL, "--protocol", help="Another protocol to demonstrate."),
    preset: str = typer.Option(DEMO_PRESET, "--preset", help="Simulator preset."),
    report: bool = typer.Option(True, "--report/--no-report", help="Make the report figures at the end."),
) -> None:
    """The main job: a hard-carbon characterization (formation, GITT, EIS, rate steps) on the simulated
    cycler in accelerated time, with live progress and metric lines, published to an embedded MQTT
    broker unless --mqtt says otherwise, ending with the summary and the report.

    Example: cyclerctl demo"""
    _logging()
    console = Console()
    program, path = _compile(protocol, None)
    instrument = f"sim:{preset}"
    settings = RunSettings(speed=parse_speed(speed), mqtt=_mqtt_mode(mqtt, "embedded"), node="demo")
    plan = ChannelPlan("ch1", program, instrument, _sim_options(instrument, seed, not no_noise), str(path))
    session = Session.create([plan], settings, out)
    console.print(f"demo: {program.name} on {instrument}, speed "
                  f"{'max' if math.isinf(settings.speed) else settings.speed}, run directory {session.run_dir}",
                  highlight=False, markup=False)
    try:
        asyncio.run(_execute(session, console, metric_lines=True, announce_mqtt=True))
    except KeyboardInterrupt:
        console.print(f"interrupted; continue with `cyclerctl resume {session.run_dir}`", highlight=False,
                      markup=False)
        raise typer.Exit(130) from None
    if report and session.journal.failed is None:
        _report(session, console)
    _finish(session)


def _report(session: Session, console: Console) -> None:
    try:
        from ..report import make_report
    except ImportError:
        console.print("report: not available in this installation", highlight=False, markup=False)
        return
    try:
        figures = make_report(session.run_dir)
    except JournalError:
        raise
    except CyclerError as exc:
        console.print(f"report: {exc}", highlight=False, markup=False)
        return
    console.print(f"report: {len(figures)} figure(s)", highlight=False, markup=False)
    for f in figures:
        console.print(f"  {f}", highlight=False, markup=False)
