"""A run: one journal, one or more channels (one asyncio task each), the MQTT publisher, the export.

`Session.create(...)` makes a new run directory (run.json + journal.sqlite) from channel plans;
`Session.resume(run_dir)` rebuilds every channel from the committed journal state (engine state, the
channel's saved model state, operator state replayed from the journal). `await session.execute()`
runs everything until every channel is done, aborted or faulted, then completes the exports (written
while the run goes) while the MQTT publisher sends what it has not sent yet. The MQTT publisher
runs in a process of its own (cyclerctl.mqtt.process; RunSettings.mqtt_process) or as a task here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import logging
import math
import os
import pickle
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..clock import Clock, VirtualClock, WallClock
from ..drivers.envelope import check_speed
from ..drivers.registry import InstrumentSpec, open_channel, open_thermostat
from ..drivers.thermostat_channel import SharedThermostat, ThermostatChannel
from ..errors import ConfigError, JournalError
from ..program import Impedance, Program
from ..store import read
from ..store.journal import JOURNAL_NAME, CommittedFeed, Journal, connect, create_meta, read_meta
from .control import RunControl
from .runner import ChannelRunner, EngineState
from .states import State

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
WAKE_TICK = 1e-3  # s of wall time: channels due in the same millisecond share one timer
BDF_UNITS = {"test_time_second": "s", "unix_time_second": "s", "step_time_second": "s", "voltage_volt": "V",
             "current_ampere": "A", "temperature_t1_celsius": "degC", "frequency_hertz": "Hz",
             "real_impedance_ohm": "ohm", "imaginary_impedance_ohm": "ohm", "cycle_count": "1",
             "step_count": "1", "step_id": "1", "sweep_segment": "1"}


@dataclass
class ChannelPlan:
    """What one channel runs: its name, compiled program, instrument spec and channel options."""

    name: str
    program: Program
    instrument: str = "sim"
    options: dict[str, Any] = field(default_factory=dict)  # e.g. seed, noise (passed to the channel)
    protocol_path: str = ""
    cell_file: str = ""
    chamber: str = ""  # thermostat spec (espec:..., meerstetter:...); "" or "sim": the simulator's own


@dataclass
class RunSettings:
    speed: float = math.inf  # inf = as fast as the CPU allows (virtual clock)
    mqtt: str = "off"  # off | embedded | mqtt://host:port
    node: str = "cyclerctl"
    commit_interval: float = 1.0  # s of wall time between commits (at least once a second)
    max_block_span: float | None = None  # s of test time per block; None: 3600 (max speed) or 1 s wall
    watchdog: float = 30.0  # s of wall time without a block -> instrument fault
    export: tuple[str, ...] = ("bdf-parquet", "bdf-csv")
    analysis: bool = True
    commit_on_step_end: bool | None = None  # None: in wall-clock runs yes; at max speed by commit_interval
    mqtt_commands: str = "open"
    channel_state_interval: float = 0.0  # s of wall time between saved channel (simulator) states; 0 = every commit
    mqtt_process: bool = True  # publish from a process of its own (another core); False: a task in this one
    start_spread: float = 0.0  # s of wall time over which a wall-clock run starts its channels (0: together)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["speed"] = "max" if math.isinf(self.speed) else self.speed
        d["export"] = list(self.export)
        return d

    @classmethod
    def from_json(cls, d: dict) -> RunSettings:
        d = dict(d)
        d["speed"] = math.inf if d.get("speed") in ("max", None) else float(d["speed"])
        d["export"] = tuple(d.get("export", ()))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def parse_speed(text: str | float | None) -> float:
    """"max" -> inf (virtual clock); a number N > 0 -> N times real time."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("max", "inf", "")):
        return math.inf
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"--speed must be 'max' or a number > 0, not {text!r}") from None
    if not v > 0:
        raise ConfigError(f"--speed must be 'max' or a number > 0, not {text!r}")
    return v


def default_run_dir(name: str, base: str | Path = "runs") -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40] or "run"
    p = Path(base) / f"{stamp}_{slug}"
    k = 1
    while p.exists():
        k += 1
        p = Path(base) / f"{stamp}_{slug}_{k}"
    return p


def write_run_json(run_dir: Path, data: dict) -> None:
    """Atomically replace RUN_DIR/run.json."""
    tmp = run_dir / (RUN_JSON + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / RUN_JSON)


def read_run_json(run_dir: Path) -> dict:
    p = Path(run_dir) / RUN_JSON
    if not p.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {RUN_JSON})")
    return json.loads(p.read_text())


def cell_dict(program: Program) -> dict:
    return dataclasses.asdict(program.cell)


def _roll_forward(run_dir: Path, ch: str, es: EngineState, program: Program) -> None:
    """Take the samples journaled after the channel's last state row into its engine state (a
    real-time rack journals the state at most once per channel_state_interval; a run at max speed has
    none after it). A step boundary always comes with a state row, so they belong to the current step."""
    conn = connect(run_dir, readonly=True)
    try:
        rows = conn.execute("SELECT seq, test_time_second, step_time_second, current_ampere FROM samples "
                            "WHERE ch=? AND seq>=? ORDER BY seq", (ch, es.seq)).fetchall()
    finally:
        conn.close()
    if not rows:
        return
    ins = program.instructions[es.pc] if es.in_step and es.pc < len(program.instructions) else None
    try:
        es.roll_forward(rows, integrate=not isinstance(ins, Impedance))
    except ValueError as exc:
        raise JournalError(f"{run_dir}: channel {ch}: {exc}") from exc


def _default_operators(program: Program) -> list:
    try:
        from ..analysis.live import default_operators
    except ImportError:
        return []
    return list(default_operators(program))


class Session:
    """A run in this process."""

    def __init__(self, run_dir: Path, journal: Journal, settings: RunSettings, run_info: dict) -> None:
        self.run_dir = Path(run_dir)
        self.journal = journal
        self.settings = settings
        self.run_info = run_info
        self.runners: dict[str, ChannelRunner] = {}
        self.clocks: dict[str, Clock] = {}
        self.control = RunControl(self.runners, journal)
        self.listeners: list[Callable[[str, str, Any], None]] = []
        self.operator_factory: Callable[[Program], list] = _default_operators
        self.mqtt_url: str | None = None
        self.mqtt_status: Any = None
        self.exported: list[Path] = []
        self.export_stream: Any = None  # store.stream.ExportStream of the running execute()
        self.export_time = 0.0  # s of wall time spent completing the exports at the end
        self.export_cpu = 0.0  # s of CPU time of this process for that
        self._export_done: asyncio.Future | None = None  # the exports being completed (execute)
        self.notes: list[str] = []
        self.resumed = False

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def create(cls, plans: list[ChannelPlan], settings: RunSettings, run_dir: Path | None = None, *,
               operator_factory: Callable[[Program], list] | None = None) -> Session:
        if not plans:
            raise ConfigError("nothing to run: no channels")
        names = [p.name for p in plans]
        if len(set(names)) != len(names):
            raise ConfigError(f"channel names must be unique, got {names}")
        for p in plans:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", p.name):
                raise ConfigError(f"channel name {p.name!r}: use letters, digits, '_', '-', '.'")
        run_dir = Path(run_dir) if run_dir else default_run_dir(plans[0].program.name)
        if (run_dir / JOURNAL_NAME).exists():
            raise ConfigError(f"{run_dir} already holds a run; continue it with `cyclerctl resume {run_dir}` "
                              f"or choose another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        run_id = uuid.uuid4().hex
        info = {
            "run_id": run_id,
            "software_version": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(),
            "status": "running",
            "settings": settings.to_json(),
            "channels": [
                {"name": p.name, "instrument": p.instrument, "chamber": p.chamber, "options": p.options,
                 "protocol": {"name": p.program.name, "path": p.protocol_path or p.program.source,
                              "sha256": p.program.protocol_hash},
                 "cell_file": p.cell_file, "cell": cell_dict(p.program)}
                for p in plans
            ],
        }
        journal = Journal(run_dir / JOURNAL_NAME, commit_interval=settings.commit_interval)
        s = cls(run_dir, journal, settings, info)
        if operator_factory is not None:
            s.operator_factory = operator_factory
        try:
            for p in plans:
                s._add_channel(p, EngineState(), None, fresh=True)
        except BaseException:
            journal.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(run_dir / JOURNAL_NAME) + suffix).unlink(missing_ok=True)
            raise
        # the whole setup in one transaction, then run.json: a run directory with run.json is resumable
        journal.write_setup(create_meta(run_id, info))
        write_run_json(run_dir, info)
        return s

    @classmethod
    def resume(cls, run_dir: Path, *, settings: RunSettings | None = None, continue_paused: bool = False,
               operator_factory: Callable[[Program], list] | None = None) -> Session:
        run_dir = Path(run_dir)
        info = read_run_json(run_dir)
        conn = connect(run_dir, readonly=False)
        try:
            meta = read_meta(conn)
            chans = read.channels(conn)
            programs = dict(conn.execute("SELECT ch, program FROM programs").fetchall())
            states = {ch: read.engine_state(conn, ch) for ch in chans}
        finally:
            conn.close()
        settings = settings or RunSettings.from_json(info.get("settings", {}))
        journal = Journal(run_dir / JOURNAL_NAME, commit_interval=settings.commit_interval)
        info["status"] = "running"
        info.setdefault("resumed", []).append(dt.datetime.now(dt.UTC).isoformat())
        s = cls(run_dir, journal, settings, info)
        s.resumed = True
        if operator_factory is not None:
            s.operator_factory = operator_factory
        if meta.get("run_id") != info.get("run_id"):
            raise ConfigError(f"{run_dir}: run.json and the journal belong to different runs")
        if not chans:
            raise ConfigError(f"{run_dir}: the run never started (stopped during setup); start it again with "
                              f"`cyclerctl run`")
        by_name = {c["name"]: c for c in info["channels"]}
        for ch in chans:
            blob = programs.get(ch)
            if blob is None:
                raise JournalError(f"{run_dir}: no program journaled for channel {ch}")
            try:
                program = pickle.loads(blob)
            except Exception as exc:
                raise JournalError(f"{run_dir}: cannot load the program of channel {ch} ({exc}); "
                                   f"it was written by another cyclerctl version") from exc
            c = by_name.get(ch, {})
            plan = ChannelPlan(ch, program, c.get("instrument", "sim"), c.get("options", {}),
                               c.get("protocol", {}).get("path", ""), c.get("cell_file", ""), c.get("chamber", ""))
            es_dict, blob_state = states[ch]
            es = EngineState.from_dict(es_dict) if es_dict else EngineState()
            _roll_forward(run_dir, ch, es, program)
            if es.state == State.PAUSING.value:
                es.state = State.PAUSED.value
            if es.state == State.PAUSED.value and continue_paused:
                es.state = State.RUNNING.value
                journal.stage_audit(ch, "resume", "cyclerctl resume", "cli", None, {"continue_paused": True},
                                    "ok: paused channel continued on resume")
            if es.state == State.FAULTED.value and es.fault_kind in ("journal", "instrument", "internal"):
                es.state = State.RUNNING.value
                es.status = ""
                journal.stage_audit(ch, "recover", "cyclerctl resume", "cli", None, {"fault": es.fault},
                                    "ok: continued after a journal/instrument fault")
            s._add_channel(plan, es, blob_state, fresh=False)
        return s

    def _make_clock(self, test_time: float) -> Clock:
        if math.isinf(self.settings.speed):
            return VirtualClock(start=test_time)
        shared = self.clocks.get("__wall__")
        if shared is None:
            shared = WallClock(self.settings.speed, tick=WAKE_TICK)
            self.clocks["__wall__"] = shared
        return shared

    def _add_channel(self, plan: ChannelPlan, es: EngineState, channel_state: bytes | None, *, fresh: bool) -> None:
        spec = InstrumentSpec.parse(plan.instrument)
        chamber = (plan.chamber or "").strip()
        if chamber.lower() == "sim" and spec.kind != "sim":
            raise ConfigError(f"channel {plan.name}: chamber 'sim' is the simulated cycler's built-in chamber; "
                              f"with {plan.instrument} give a real one (espec:tcp://HOST:PORT, espec:/dev/ttyUSB0, "
                              f"meerstetter:PORT)")
        clock = self._make_clock(es.test_time)
        self.clocks[plan.name] = clock
        options = dict(plan.options)
        options.setdefault("name", plan.name)
        try:
            channel = open_channel(spec, clock, plan.program.cell, **options)
        except TypeError:
            options.pop("name", None)
            channel = open_channel(spec, clock, plan.program.cell, **options)
        if channel.capabilities.real_hardware and self.settings.speed != 1.0:
            raise ConfigError(f"channel {plan.name}: {plan.instrument} is real hardware; it runs only at "
                              f"--speed 1")
        if chamber and chamber.lower() != "sim":
            channel = ThermostatChannel(channel, self._chamber(plan.name, chamber, clock))
        if channel_state is not None:
            channel.load_state(channel_state)
        lock = self._instrument_lock(spec, plan.name)
        span = self.settings.max_block_span
        if span is None:
            span = 3600.0 if math.isinf(self.settings.speed) else self.settings.speed * 1.0
        operators = self.operator_factory(plan.program) if self.settings.analysis else []
        on_step_end = self.settings.commit_on_step_end
        if on_step_end is None:
            on_step_end = not math.isinf(self.settings.speed)
        runner = ChannelRunner(plan.name, plan.program, channel, self.journal, clock, operators=operators,
                               lock=lock, max_block_span=span, watchdog=self.settings.watchdog,
                               commit_on_step_end=on_step_end, state=es,
                               inline_commits=math.isinf(self.settings.speed),
                               channel_state_interval=self.settings.channel_state_interval)
        runner.listeners.append(self._forward)
        self.runners[plan.name] = runner
        descriptor = {
            "cell": cell_dict(plan.program),
            "protocol": {"name": plan.program.name, "path": plan.protocol_path or plan.program.source,
                         "sha256": plan.program.protocol_hash},
            "instrument": plan.instrument, "chamber": plan.chamber or None, "kind": spec.kind,
            "preset": spec.address if spec.kind == "sim" else None,
            "model": channel.capabilities.model, "options": plan.options,
            "columns": BDF_UNITS,
        }
        self.journal.add_channel(plan.name, self.run_info["run_id"], descriptor,
                                 pickle.dumps(plan.program) if fresh else None, runner.snapshot, defer=fresh)
        if not fresh:
            conn = connect(self.run_dir, readonly=True)
            try:
                runner.rebuild_operators(read.replay(conn, plan.name, to_seq=es.seq, to_event=es.event_seq))
            finally:
                conn.close()

    _locks: dict[str, asyncio.Lock]
    _chambers: dict[str, SharedThermostat]

    def _chamber(self, ch: str, text: str, clock: Clock) -> SharedThermostat:
        """The chamber of a --chamber / bench `chamber:` spec, one per physical chamber (channels naming
        the same one share it and its lock). Identified before the run: real hardware runs only at
        --speed 1, a simulated chamber at the run's --speed."""
        if not hasattr(self, "_chambers"):
            self._chambers = {}
        kind, _, address = text.partition(":")
        key = f"{kind.lower()}:{address.strip()}"
        shared = self._chambers.get(key)
        if shared is not None:
            return shared
        thermostat = open_thermostat(text, clock)
        try:
            thermostat.identify()
            speed = self.settings.speed
            if thermostat.capabilities.real_hardware:
                if speed != 1.0:
                    raise ConfigError(f"channel {ch}: the chamber {text} is real hardware; it runs only at --speed 1")
            else:
                check_speed(f"chamber {text}", thermostat.instrument_speed, speed)
        except BaseException:
            thermostat.disconnect()
            raise
        shared = self._chambers[key] = SharedThermostat(thermostat)
        return shared

    def _instrument_lock(self, spec: InstrumentSpec, ch: str) -> asyncio.Lock | None:
        """One lock per physical instrument; each simulated channel is its own instrument."""
        if spec.kind == "sim":
            return None
        if not hasattr(self, "_locks"):
            self._locks = {}
        key = f"{spec.kind}:{spec.address.split('#')[0]}"
        return self._locks.setdefault(key, asyncio.Lock())

    def _forward(self, ch: str, kind: str, payload: Any) -> None:
        for cb in self.listeners:
            cb(ch, kind, payload)

    # ---- running ----------------------------------------------------------------------------------

    async def execute(self) -> dict[str, str]:
        """Run every channel to its end; returns ch -> final state. The BDF exports are written while
        the run goes and completed at its end."""
        stream = self.export_stream = self._start_export_stream()
        self._export_done = None
        try:
            results = await self._execute()
            if self._export_done is not None:  # completed while the MQTT publisher sent the rest
                self.exported = await self._export_done
        except BaseException:
            if self._export_done is not None:
                with contextlib.suppress(BaseException):
                    await self._export_done
            if stream is not None:
                stream.abandon()
            raise
        if stream is not None and self._export_done is None:
            stream.abandon()  # the journal failed: the files are exported from it, if at all, later
        return results

    def _complete_export(self) -> None:
        """After the last commit: the streamed exports completed in a thread of their own, while the
        MQTT publisher (another process) sends what it has not sent yet."""
        stream = self.export_stream
        if stream is None or self.journal.failed is not None:
            return

        def finish() -> list[Path]:
            t, c = time.perf_counter(), time.process_time()
            try:
                return stream.finish()
            finally:
                self.export_time, self.export_cpu = time.perf_counter() - t, time.process_time() - c

        self._export_done = asyncio.ensure_future(asyncio.to_thread(finish))

    def _start_export_stream(self):
        """The BDF files written while the run goes (store/stream.py), fed by every commit; a resumed
        run first copies what is committed into fresh files."""
        if not self.settings.export:
            return None
        from ..store.export import parse_formats
        from ..store.stream import ExportStream, partial_files

        for p in partial_files(self.run_dir):  # left by a run that did not end cleanly
            p.unlink(missing_ok=True)
        stream = ExportStream(self.run_dir, list(self.runners), parse_formats(self.settings.export))
        if self.resumed:
            for ch, r in self.runners.items():
                stream.prime(ch, r.es.seq)
        self.journal.feeds.append(stream)
        return stream

    async def _execute(self) -> dict[str, str]:
        stop_mqtt = asyncio.Event()
        # everything set up so far (programs, models, tables) lives as long as the run: the cyclic
        # garbage collector need not scan it again (a full collection over a rack's objects stalls
        # the event loop for tens of milliseconds, which real-time channels see as latency)
        gc.collect()
        gc.freeze()
        try:
            return await self._run_channels(stop_mqtt)
        finally:
            gc.unfreeze()

    async def _run_channels(self, stop_mqtt: asyncio.Event) -> dict[str, str]:
        mqtt_task = None
        async with contextlib.AsyncExitStack() as stack:
            url = await self._start_broker(stack)
            if url is not None:
                mqtt_task = self._start_mqtt(url, stop_mqtt)
            stop_committer = asyncio.Event()
            committer = None
            if not math.isinf(self.settings.speed):  # wall clock: acquisition never waits for the disk
                committer = asyncio.create_task(self.journal.run_committer(stop_committer), name="committer")
            tasks = {ch: asyncio.create_task(self._run_channel(r, k), name=f"channel:{ch}")
                     for k, (ch, r) in enumerate(self.runners.items())}
            ended = False
            try:
                results = dict(zip(tasks, await asyncio.gather(*tasks.values()), strict=True))
                ended = True
            except BaseException:
                for t in tasks.values():
                    t.cancel()
                await asyncio.gather(*tasks.values(), return_exceptions=True)
                self._finish_status()
                raise
            finally:
                if committer is not None:
                    stop_committer.set()
                    self.journal.kick()
                    await committer
                with contextlib.suppress(JournalError):
                    await self.journal.commit()
                if ended:
                    self._complete_export()
                if mqtt_task is not None:
                    stop_mqtt.set()
                    try:
                        await asyncio.wait_for(mqtt_task, 30)
                    except Exception as exc:  # noqa: BLE001 - publishing never fails the run
                        self.notes.append(f"MQTT publisher ended with: {exc}")
        self._finish_status()
        self.journal.close()
        return results

    async def _run_channel(self, runner: ChannelRunner, k: int) -> str:
        """Run one channel; in a wall-clock run with start_spread, channel k of N starts k/N of it
        later, so a rack started together does not take every channel's samples in the same instant."""
        spread = self.settings.start_spread
        if spread > 0 and not math.isinf(self.settings.speed) and len(self.runners) > 1:
            await asyncio.sleep(spread * k / len(self.runners))
        return await runner.run()

    async def _start_broker(self, stack: contextlib.AsyncExitStack) -> str | None:
        mode = (self.settings.mqtt or "off").strip()
        if mode.lower() == "off":
            return None
        if mode.lower() == "embedded":
            try:
                from ..mqtt.broker import EmbeddedBroker
            except ImportError:
                self.notes.append("MQTT: the embedded broker is not available in this installation")
                return None
            broker = await stack.enter_async_context(EmbeddedBroker(host="127.0.0.1", port=0))
            self.mqtt_url = broker.url
            return broker.url
        self.mqtt_url = mode
        return mode

    def _start_mqtt(self, url: str, stop: asyncio.Event):
        try:
            from ..mqtt.service import MqttStatus, run_mqtt
        except ImportError:
            self.notes.append("MQTT: the publisher is not available in this installation")
            return None
        self.mqtt_status = MqttStatus()
        if self.settings.mqtt_process:
            from ..mqtt.process import run_mqtt_process

            return asyncio.create_task(run_mqtt_process(self.run_dir / JOURNAL_NAME, url, self.settings.node,
                                                        self.control, stop, status=self.mqtt_status,
                                                        commands=self.settings.mqtt_commands,
                                                        feeds=self.journal.feeds), name="mqtt")
        feed = CommittedFeed()
        self.journal.feeds.append(feed)
        return asyncio.create_task(run_mqtt(self.run_dir / JOURNAL_NAME, url, self.settings.node, self.control,
                                            stop, status=self.mqtt_status, commands=self.settings.mqtt_commands,
                                            feed=feed),
                                   name="mqtt")

    def _finish_status(self) -> None:
        per = {ch: (r.es.status or r.sm.state.value) for ch, r in self.runners.items()}
        statuses = set(per.values())
        status = statuses.pop() if len(statuses) == 1 else "mixed"
        if self.journal.failed is not None:
            status = "faulted"
        self.run_info["status"] = status
        self.run_info["channel_status"] = per
        faults = {ch: r.es.fault for ch, r in self.runners.items() if r.es.fault}
        if faults:
            self.run_info["faults"] = faults
        write_run_json(self.run_dir, self.run_info)

    @property
    def status(self) -> str:
        return self.run_info.get("status", "")
