"""One channel running its Program: the step machine.

The runner walks `Program.instructions` with a program counter (docs/architecture.md, "Engine
semantics"): primitive steps run on the Channel block by block; ends carry gotos; LoopStart/LoopEnd
keep counters and evaluate loop conditions on live metrics from the cycle operator; cycle_count and
step_count follow the BDF rules. Every block is checked against the step's safety limits before
anything else; a breach, an InstrumentError or a JournalError puts the channel in its safe state.

Everything the runner knows is in `EngineState`, which is journaled with the samples it produced
(one transaction), so `cyclerctl resume` continues the same step with the same counters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..channel import Block, Channel, StepStart
from ..clock import Clock
from ..errors import InstrumentError, JournalError
from ..program import (
    ConstantCurrent,
    ConstantVoltage,
    Impedance,
    LoopEnd,
    LoopStart,
    Program,
    Rest,
    SetTemperature,
    Step,
    Sweep,
)
from ..store import schema
from ..store.journal import Journal
from ..store.read import event_type
from .safety import SafetyMonitor, Trip
from .states import TERMINAL, State, StateMachine

log = logging.getLogger(__name__)

_COL = {name: i for i, name in enumerate(schema.SAMPLE_COLUMNS)}
_NCOL = len(schema.SAMPLE_COLUMNS)
_BLOCK_TO_JOURNAL = ("voltage_volt", "current_ampere", "temperature_t1_celsius", "frequency_hertz",
                     "real_impedance_ohm", "imaginary_impedance_ohm", "sweep_segment")
_BLOCK_TO_JOURNAL_COL = tuple((name, _COL[name]) for name in _BLOCK_TO_JOURNAL)
_SEQ, _T, _UNIX, _ST = _COL["seq"], _COL["test_time_second"], _COL["unix_time_second"], _COL["step_time_second"]
_CYCLE, _STEP, _STEP_ID = _COL["cycle_count"], _COL["step_count"], _COL["step_id"]
_V = _COL["voltage_volt"]


@dataclass(slots=True)
class EngineState:
    """What the engine must remember to continue a channel exactly (all SI)."""

    state: str = State.IDLE.value
    pc: int = 0
    in_step: bool = False  # a step has started and not ended (paused or interrupted by a crash)
    loops: dict[str, int] = field(default_factory=dict)  # loop_id -> completed iterations
    cycle_count: int = 1
    step_count: int = 0
    last_direction: int = 0
    test_time: float = 0.0  # s, of the last sample (or of the last step boundary)
    step_time: float = 0.0  # s in the current step, pause excluded
    step_charge: float = 0.0  # C passed in the current step (signed)
    total_charge: float = 0.0  # C passed since the start of the run (signed)
    last_t: float | None = None  # last sample in this step segment, for charge integration
    last_i: float | None = None
    seq: int = 0  # next sample seq
    event_seq: int = 0
    metric_seq: int = 0
    unix_origin: float = 0.0  # unix time of test_time 0
    status: str = ""  # complete | stopped | aborted | faulted
    fault: str = ""  # message of the fault
    fault_kind: str = ""  # safety | instrument | journal
    trailing: dict[str, int] = field(default_factory=dict)  # safety debounce carry
    last_voltage: float | None = None  # V, of the last sample that had one (a sweep from the OCV)
    sweep_start: float | None = None  # V, where the from-OCV sweep in progress started

    def to_json(self) -> str:
        """The state as JSON (journaled with every commit of the channel: kept cheap)."""
        if not (math.isfinite(self.test_time) and math.isfinite(self.step_charge)
                and math.isfinite(self.total_charge)):
            raise ValueError(f"engine state is not finite: {self!r}")
        return orjson.dumps(self).decode()

    def roll_forward(self, rows: Iterable[tuple[float, float, float, float | None]], integrate: bool) -> int:
        """Continue the state over samples journaled after it (seq, test time, step time, current;
        in seq order, from self.seq on): the next seq, the times and, when `integrate`, the charge
        counted exactly as the engine counts it sample by sample. Returns the samples taken."""
        n = 0
        for seq, t, st, i in rows:
            if int(seq) != self.seq:
                raise ValueError(f"journal samples are not contiguous: seq {int(seq)} where {self.seq} was due")
            if integrate and i is not None:
                if self.last_t is not None and self.last_i is not None:
                    dq = 0.5 * (i + self.last_i) * (t - self.last_t)
                    self.step_charge += dq
                    self.total_charge += dq
                self.last_t, self.last_i = t, i
            self.test_time = t
            if st is not None:
                self.step_time = st
            self.seq += 1
            n += 1
        return n

    @classmethod
    def from_dict(cls, d: dict) -> EngineState:
        names = set(cls.__slots__)  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in d.items() if k in names})




def step_parameters(step: Step) -> dict[str, Any]:
    """The set-point of a step for its step_start event (BDF-style names, SI)."""
    if isinstance(step, ConstantCurrent):
        return {"current_ampere": step.current}
    if isinstance(step, ConstantVoltage):
        return {"voltage_volt": step.voltage, "current_limit_ampere": _finite(step.current_limit)}
    if isinstance(step, Sweep):
        return {"scan_rate_volt_per_second": step.scan_rate, "start_volt": step.start,
                "vertices_volt": list(step.vertices), "cycles": step.cycles,
                "start_at_ocv": getattr(step, "from_ocv", False)}
    if isinstance(step, Impedance):
        out: dict[str, Any] = {
            "mode": step.mode, "freq_start_hertz": step.freq_start, "freq_stop_hertz": step.freq_stop,
            "amplitude": step.amplitude, "bias": step.bias, "points_per_decade": step.points_per_decade,
            "acquisition": step.acquisition}
        if step.acquisition == "waveform":
            out.update(samples_per_period=step.samples_per_period, periods=step.periods)
        return out
    if isinstance(step, SetTemperature):
        return {"temperature_kelvin": step.temperature}
    if isinstance(step, Rest):
        return {"current_ampere": 0.0}
    return {}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class ChannelRunner:
    """Runs one Program on one Channel, journaling everything.

    operators: analysis operators fed exactly the rows written to the journal, in journal order.
    lock: the instrument's lock (channels sharing an instrument take turns per block).
    watchdog: wall seconds without a block before the instrument counts as not answering."""

    def __init__(self, name: str, program: Program, channel: Channel, journal: Journal, clock: Clock, *,
                 operators: list | None = None, lock: asyncio.Lock | None = None,
                 max_block_span: float = math.inf, watchdog: float = 30.0,
                 commit_on_step_end: bool = True, state: EngineState | None = None,
                 inline_commits: bool = True, channel_state_interval: float = 0.0) -> None:
        self.name = name
        self.program = program
        self.channel = channel
        self.journal = journal
        self.clock = clock
        self.operators = list(operators or [])
        self.lock = lock
        self.max_block_span = max_block_span
        self.watchdog = watchdog
        self.commit_on_step_end = commit_on_step_end
        self.inline_commits = inline_commits  # False: a background committer commits (wall-clock runs)
        self.channel_state_interval = channel_state_interval  # s of wall time; 0 = at every commit
        self._last_channel_state = -math.inf
        self._state_phase = channel_state_interval * (zlib.crc32(name.encode()) / 2**32)
        self.es = state or EngineState()
        self.sm = StateMachine(State(self.es.state))
        self.safety = SafetyMonitor()
        self.safety.trailing = dict(self.es.trailing)
        self.listeners: list[Callable[[str, str, Any], None]] = []  # (ch, kind, payload)
        # cycle_count -> the capacities of its cycle row, for the cycles loop conditions compare
        # against (capacity_retention) and the latest one: memory does not grow with the cycles
        self.cycle_history: dict[int, dict[str, Any]] = {}
        self._reference_cycles = {ins.until.reference_cycle for ins in program.instructions
                                  if isinstance(ins, LoopStart) and ins.until is not None
                                  and ins.until.reference_cycle is not None}
        self._last_cycle: int | None = None
        self._wake = asyncio.Event()
        self._skip = False
        self._after_pause = False
        self._paused = self.es.state == State.PAUSED.value
        self._task: asyncio.Task | None = None  # the task running run()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dog: asyncio.TimerHandle | None = None  # the watchdog timer
        self._waiting = False  # in a block wait, since loop time _wait_since
        self._wait_since = 0.0
        self._interrupt = False  # the wait in progress was cancelled by the watchdog or a request
        self._cancelling = 0
        self._slept = False  # the last block wait suspended on the clock (no extra yield needed)
        self._time_offset = self.es.test_time - clock.now()  # test time = clock.now() + offset
        self._Event = event_type()
        self.current_step: Step | None = None
        self._pull_interrupt: Callable[[], None] | None = None  # ends a pulled step (_pulled)

    # ---- journal snapshot -------------------------------------------------------------------------

    def snapshot(self, samples_only: bool = False) -> tuple[str, str, bytes | None] | None:
        """(state name, engine state JSON, channel state or None to keep the journaled one) for the
        commit, or None for no state row in it.

        samples_only: nothing but samples was staged since the last commit. With a
        channel_state_interval (real-time racks) such a commit then carries the state at most once per
        interval: the samples after it are enough to continue (Session.resume rolls the engine state
        forward over them, EngineState.roll_forward). Any event or metric row brings the state along."""
        keep_channel_state = False
        if self.channel_state_interval > 0:
            now = time.monotonic()
            if self._last_channel_state == -math.inf:
                # the channel's state is first saved at a phase of the interval fixed per channel, and
                # then once per interval: a rack started together does not save every channel at once
                self._last_channel_state = now - self.channel_state_interval + self._state_phase
            if now - self._last_channel_state < self.channel_state_interval and self.sm.state == State.RUNNING:
                if samples_only:
                    return None
                keep_channel_state = True
            else:
                self._last_channel_state = now
        self.es.state = self.sm.state.value
        self.es.trailing = dict(self.safety.trailing)
        if keep_channel_state:
            return self.es.state, self.es.to_json(), None  # None keeps the journaled channel state
        try:
            blob = self.channel.save_state()
        except Exception:  # noqa: BLE001 - a channel that cannot save is resumed without its state
            log.exception("channel %s: save_state failed", self.name)
            blob = None
        return self.es.state, self.es.to_json(), blob

    # ---- operator requests (called by RunControl; validated there) -------------------------------

    def poke(self) -> None:
        """Wake the runner: a request changed the state or asked for a skip."""
        self._wake.set()
        self._interrupt_wait()

    def request_skip(self) -> None:
        self._skip = True
        self.poke()

    # ---- events and metrics -----------------------------------------------------------------------

    def _emit(self, kind: str, data: dict[str, Any] | None = None, at: float | None = None) -> None:
        """Journal an event at test time `at` (default: now) and feed it to the operators."""
        es = self.es
        data = data or {}
        now = self.test_time_now() if at is None else at
        unix = es.unix_origin + now
        data = _clean(data)
        row = (es.event_seq, kind, now, unix, es.cycle_count, es.step_count, es.seq, _json(data))
        self.journal.stage_event(self.name, row)
        ev = self._Event(kind=kind, test_time_second=now, cycle_count=es.cycle_count,
                         step_count=es.step_count, sample_seq=es.seq, data=data, ch=self.name,
                         seq=es.event_seq, unix_time_second=unix)
        es.event_seq += 1
        for op in list(self.operators):
            self._metrics(self._feed(op, "event", ev))
        self._notify("event", ev)

    def _feed(self, op, kind: str, item, replaying: bool = False) -> list:
        """One operator fed one block or event. An operator that raises is switched off for the rest of
        the run with an `analysis_error` event (the test goes on; its samples are all in the journal,
        and `cyclerctl analyze` recomputes the metrics once the analysis is fixed)."""
        try:
            return op.feed_samples(item) if kind == "samples" else op.feed_event(item)
        except Exception as exc:  # noqa: BLE001 - an analysis bug must not stop a test
            if op in self.operators:
                self.operators.remove(op)
            what = getattr(op, "kind", type(op).__name__)
            log.error("channel %s: the %s analysis failed and is switched off for this run: %s: %s",
                      self.name, what, type(exc).__name__, exc, exc_info=True)
            if not replaying:
                self._emit("analysis_error", {"operator": what, "error": f"{type(exc).__name__}: {exc}",
                                              "note": "the test goes on without it; every sample is in the journal"})
            return []

    def _metrics(self, rows) -> None:
        for r in rows or ():
            data = dict(r.data)
            text = _json(data)
            self.journal.stage_metric(self.name, (self.es.metric_seq, r.kind, data.get("test_time_second"),
                                                  data.get("cycle_count"), text))
            self.es.metric_seq += 1
            if r.kind == "cycle" and data.get("cycle_count") is not None:
                self._remember_cycle(data)
            self._notify("metric", r)

    def _remember_cycle(self, data: dict[str, Any]) -> None:
        cycle = int(data["cycle_count"])
        if self._last_cycle is not None and self._last_cycle != cycle and self._last_cycle not in self._reference_cycles:
            self.cycle_history.pop(self._last_cycle, None)
        self.cycle_history[cycle] = {k: data[k] for k in _CAPACITY_KEYS if k in data}
        self._last_cycle = cycle

    def test_time_now(self) -> float:
        """Test time now: the clock's (wall-clock runs go on during pauses), never before the last sample."""
        return max(self.es.test_time, self.clock.now() + self._time_offset)

    def _notify(self, kind: str, payload: Any) -> None:
        for cb in self.listeners:
            cb(self.name, kind, payload)

    def rebuild_operators(self, replay) -> None:
        """Feed the committed journal stream through the (fresh) operators; their metric rows are
        already in the journal, so they are only counted, not written again."""
        produced = 0
        for kind, item in replay:
            for op in list(self.operators):
                rows = self._feed(op, kind, item, replaying=True)
                for r in rows or ():
                    produced += 1
                    if r.kind == "cycle" and r.data.get("cycle_count") is not None:
                        self._remember_cycle(r.data)
        if produced != self.es.metric_seq:
            log.warning("channel %s: replay produced %d metric rows, journal holds %d", self.name, produced,
                        self.es.metric_seq)

    # ---- the main loop ---------------------------------------------------------------------------

    async def run(self) -> str:
        """Run until done, aborted or faulted. Returns the final state name."""
        try:
            await self.channel.open()
            if self.sm.state == State.IDLE:
                self._time_offset = self.es.test_time - self.clock.now()  # test time counts from the start
                if self.es.unix_origin == 0.0:
                    self.es.unix_origin = self.clock.unix() - self.es.test_time
                self.sm.apply("start")
                self._emit("run_start", {"run": self.program.name, "protocol": self.program.source,
                                         "cell": self.program.cell.name})
                await self._commit_now()
            while True:
                st = self.sm.state
                if st == State.ABORTED and not self.es.status:
                    await self._end_run("aborted", None)
                if st in TERMINAL:
                    break
                await self._tick()
        except JournalError as exc:
            await self._fault(str(exc), "journal", commit=False)
        except InstrumentError as exc:
            await self._fault(str(exc), "instrument")
        except asyncio.CancelledError:
            await self._safe()
            raise
        except Exception as exc:  # a bug must still leave the cell safe
            log.exception("channel %s: unexpected error", self.name)
            await self._fault(f"internal error: {exc!r}", "internal")
        finally:
            if self._dog is not None:
                self._dog.cancel()
                self._dog = None
            try:
                await self.channel.close()
            except Exception:  # noqa: BLE001
                log.exception("channel %s: close failed", self.name)
        return self.sm.state.value

    async def _tick(self) -> None:
        st = self.sm.state
        if self._skip and st in (State.RUNNING, State.PAUSED):
            self._do_skip()
            await self._commit_now()
            return
        if st == State.PAUSED:
            self._wake.clear()
            if self.sm.state == State.PAUSED and not self._skip:
                await self._wake.wait()
            return
        if st == State.PAUSING:
            await self._safe()
            self._paused = True
            self._emit("pause", {})
            self.sm.apply("paused")
            await self._commit_now()
            return
        if self._paused and st == State.RUNNING:
            self._paused = False
            self._after_pause = True
            self._emit("resume", {})
            await self._commit_now()
            return
        if st == State.STOPPING:
            await self._end_run("stopped", "finish")
            return
        pcs = self.program.instructions
        if self.es.pc >= len(pcs):
            await self._end_run("complete", "finish")
            return
        ins = pcs[self.es.pc]
        if isinstance(ins, LoopStart):
            self.es.loops[str(ins.loop_id)] = 0
            self.es.pc += 1
        elif isinstance(ins, LoopEnd):
            self._loop_end(ins)
        else:
            await self._run_step(ins)

    def _loop_end(self, ins: LoopEnd) -> None:
        start = self.program.instructions[ins.start]
        assert isinstance(start, LoopStart)
        key = str(ins.loop_id)
        n = self.es.loops.get(key, 0) + 1
        self.es.loops[key] = n
        leave = False
        if start.count is not None and n >= start.count:
            leave = True
        if start.until is not None and start.until.holds(self.metric_value(start.until)):
            leave = True
        if start.at_most is not None and n >= start.at_most:
            leave = True
        if start.count is None and start.until is None and start.at_most is None:
            leave = True  # a loop without a bound runs once
        self.es.pc = start.end + 1 if leave else ins.start + 1
        self.journal.touch(self.name)

    def metric_value(self, cond) -> float | None:
        """The live value of a loop-condition metric, from the cycle operator (None if unknown)."""
        if cond.metric == "cycle_count":
            return float(self.es.cycle_count)
        cur: dict[str, Any] = {}
        for op in self.operators:
            if getattr(op, "kind", "") == "cycle" and hasattr(op, "current"):
                try:
                    cur = dict(op.current(cond.reference_cycle) or {})
                except TypeError:
                    cur = dict(op.current() or {})
                break
        if cur.get(cond.metric) is None and cond.metric == "capacity_retention" and cond.reference_cycle:
            ref = self.cycle_history.get(cond.reference_cycle)
            last = self._last_cycle
            if ref is None or last is None:
                return None
            key = _reversible_key(ref, self.program.cell.kind)
            a, b = self.cycle_history[last].get(key), ref.get(key)
            return None if not a or not b else a / b
        v = cur.get(cond.metric)
        return None if v is None else float(v)

    # ---- one step ----------------------------------------------------------------------------------

    def _begin_step(self, step: Step) -> None:
        es = self.es
        es.step_count += 1
        d = step.direction
        if d:
            target = -1 if self.program.cycle_starts_on == "discharge" else 1
            if d == target and es.last_direction == -target:
                es.cycle_count += 1
                self._emit("cycle_start", {"cycle_count": es.cycle_count})
            es.last_direction = d
        es.step_time = 0.0
        es.step_charge = 0.0
        es.last_t = es.last_i = None
        es.in_step = True
        self.safety.reset()
        data = {"step_id": step.step_id, "step_type": step.step_type, "technique": step.technique,
                "name": step.name, "tags": dict(step.tags), "pc": es.pc, "direction": d}
        data.update(step_parameters(step))
        self._emit("step_start", data)

    def _end_step(self, reason: str, label: str = "", at: float | None = None) -> None:
        self._emit("step_end", {"step_id": self.current_step.step_id if self.current_step else None,
                                "reason": reason, "end_label": label}, at=at)
        self.es.in_step = False
        self.es.last_t = self.es.last_i = None
        self.es.sweep_start = None

    async def _run_step(self, step: Step) -> None:
        es = self.es
        if isinstance(step, Sweep) and not step.resolved:
            # a sweep from the open-circuit voltage starts at the potential measured last (the rest
            # before it), fixed when the step starts: a resumed sweep keeps its start
            if not es.in_step:
                es.sweep_start = es.last_voltage
            if es.sweep_start is None:
                await self._fault(f"step {step.name!r} starts at the open-circuit voltage, but nothing was "
                                  "measured before it: put a rest or ocv step before the sweep", "program")
                return
            step = step.at(es.sweep_start)
        self.current_step = step
        if not es.in_step:
            self._begin_step(step)
        start = StepStart(test_time=self.test_time_now(),
                          step_time=es.step_time, step_charge=es.step_charge,
                          max_block_span=self.max_block_span)
        if self._after_pause:  # no charge integration across a pause (the output was off)
            es.last_t = es.last_i = None
            self._after_pause = False
        seg_t0, seg_st0 = start.test_time, start.step_time
        pull = getattr(self.channel, "pull_step", None)
        if pull is not None and self.lock is None and not self.inline_commits and hasattr(self.clock, "call_when"):
            kind, value = await self._pulled(pull(step, start), step, seg_t0, seg_st0)
        else:
            kind, value = await self._pushed(step, start, seg_t0, seg_st0)
        if kind == "trip":
            trip: Trip = value
            await self._safe()
            # the trip is at the sample that crossed (the last one journaled). On a virtual clock the
            # clock stands at the end of the block the channel computed ahead, which never happened:
            # the events that follow the trip are at its time too; on a wall clock they are at now.
            t_trip = es.test_time
            after = t_trip if math.isinf(getattr(self.clock, "speed", 1.0)) else None
            self._emit("safety_trip", {"limit": trip.limit, "value": trip.value, "bound": trip.bound}, at=t_trip)
            self._end_step("fault", at=after)
            await self._fault(trip.message, "safety", at=after)
        elif kind == "end":
            end_index = value
            goto = None
            label = ""
            if end_index is not None and 0 <= end_index < len(step.ends):
                goto = step.ends[end_index].goto
                label = step.ends[end_index].label
            self._end_step("end" if end_index is not None else "complete", label)
            es.pc = goto if goto is not None else es.pc + 1
            if not self.inline_commits:
                if self.commit_on_step_end:
                    self.journal.kick()
            elif self.commit_on_step_end or self.journal.due():
                await self.journal.commit(wait=False)
        else:
            await self._interrupted()

    async def _pushed(self, step: Step, start: StepStart, seg_t0: float, seg_st0: float) -> tuple[str, Any]:
        """The blocks of a step from the channel's run_step, each awaited: (outcome, value)."""
        it = self.channel.run_step(step, start).__aiter__()
        try:
            while True:
                if self.journal.failed is not None:  # a commit in flight failed: stop at once
                    raise self.journal.failed
                if self.sm.state != State.RUNNING or self._skip:
                    return ("interrupt", None)
                block = await self._next_block(it)
                if block is None:
                    return ("interrupt", None)
                trip = self._take_block(step, block, seg_t0, seg_st0)
                if trip is not None:
                    return ("trip", trip)
                if block.final:
                    return ("end", block.end)
                if self.inline_commits and self.journal.due():
                    await self.journal.commit(wait=False)
                elif not self._slept:  # the block came without waiting on the clock:
                    await asyncio.sleep(0)  # cooperative yield, not a wait: other channels, control
        finally:
            await it.aclose()

    async def _pulled(self, blocks: Iterator[tuple[float, Block]], step: Step, seg_t0: float,
                      seg_st0: float) -> tuple[str, Any]:
        """The blocks of a step from the channel's pull_step (a simulated channel on a wall clock):
        each block is taken by a clock callback once its time has come, so the task sleeps through
        the whole step instead of waking for every sample. Same checks and order as _pushed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        clock = self.clock
        pending: Block | None = None  # the block waiting for its time

        def finish(outcome: tuple[str, Any] | None, exc: BaseException | None = None) -> None:
            if not done.done():
                if exc is None:
                    done.set_result(outcome)
                else:
                    done.set_exception(exc)

        def advance() -> None:
            nonlocal pending
            if done.done():
                return
            try:
                if self.journal.failed is not None:
                    raise self.journal.failed
                if self.sm.state != State.RUNNING or self._skip:
                    finish(("interrupt", None))
                    return
                if pending is not None:
                    block, pending = pending, None
                    trip = self._take_block(step, block, seg_t0, seg_st0)
                    if trip is not None:
                        finish(("trip", trip))
                        return
                    if block.final:
                        finish(("end", block.end))
                        return
                try:
                    due, pending = next(blocks)
                except StopIteration:
                    raise InstrumentError("the instrument ended a step without a final block",
                                          resource=getattr(self.channel, "name", "")) from None
                if due > clock.now():
                    clock.call_when(due, advance)  # type: ignore[attr-defined]
                else:
                    loop.call_soon(advance)  # behind time: take it at once, after what else is ready
            except BaseException as exc:  # noqa: BLE001 - handed to the task, which handles it as _pushed would
                finish(None, exc)

        self._pull_interrupt = lambda: finish(("interrupt", None))
        advance()
        try:
            return await done
        finally:
            self._pull_interrupt = None
            blocks.close()  # type: ignore[attr-defined]

    async def _next_block(self, it) -> Block | None:
        """The next block, or None when an operator request interrupted the wait.
        Raises InstrumentError when the instrument does not answer within the watchdog.

        The watchdog is one timer per channel, armed at most once per watchdog period (not one
        timer per block): each wait only notes when it began; the timer, when it fires, checks
        whether the wait in progress is older than the watchdog and otherwise re-arms itself."""
        task = self._task
        if task is None:
            task = self._task = asyncio.current_task()
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._wait_since = loop.time()
        self._cancelling = task.cancelling()
        if self._dog is None:
            self._dog = loop.call_at(self._wait_since + self.watchdog, self._check_watchdog)
        self._waiting = True
        sleeps = getattr(self.clock, "sleeps", None)
        try:
            if self.lock is not None:
                async with self.lock:
                    block = await anext(it)
            else:
                block = await anext(it)
            # a wall-clock channel that slept on the clock for this block has let every other task run
            self._slept = sleeps is not None and self.clock.sleeps != sleeps  # type: ignore[attr-defined]
            return block
        except asyncio.CancelledError:
            if not self._interrupt or task.uncancel() > self._cancelling:
                raise  # cancelled from outside (the session is shutting down)
            if self.sm.state != State.RUNNING or self._skip:
                return None
            raise InstrumentError(f"no answer from the instrument within {self.watchdog:g} s",
                                  resource=getattr(self.channel, "name", "")) from None
        except StopAsyncIteration:
            raise InstrumentError("the instrument ended a step without a final block",
                                  resource=getattr(self.channel, "name", "")) from None
        finally:
            self._waiting = False
            self._interrupt = False

    def _check_watchdog(self) -> None:
        self._dog = None
        if not self._waiting or self._loop is None:
            return
        due = self._wait_since + self.watchdog
        if self._loop.time() >= due:
            self._interrupt_wait()
        else:
            self._dog = self._loop.call_at(due, self._check_watchdog)

    def _interrupt_wait(self) -> None:
        """End the block wait in progress (watchdog, or an operator request)."""
        if self._pull_interrupt is not None:
            self._pull_interrupt()
            return
        if self._waiting and not self._interrupt and self._task is not None:
            self._interrupt = True
            self._task.cancel()

    def _take_block(self, step: Step, block: Block, seg_t0: float, seg_st0: float) -> Trip | None:
        """Safety check, journal rows, operator feed and counters for one block (no awaits)."""
        es = self.es
        n = len(block)
        if n == 0:
            return None
        cols = block.columns
        if n == 1:
            return self._take_sample(step, cols, seg_t0, seg_st0)
        t = np.asarray(cols["test_time_second"], dtype=np.float64)
        st = cols.get("step_time_second")
        st = seg_st0 + (t - seg_t0) if st is None else np.asarray(st, dtype=np.float64)
        trip = self.safety.check(step.limits, cols, st)
        if trip is not None and trip.index < n - 1:
            # the step ends at the sample that tripped: what the channel computed or measured after
            # it is not part of the step (a simulated block may run an hour past it at max speed)
            n = trip.index + 1
            t, st = t[:n], st[:n]
            cols = {name: a[:n] for name, a in cols.items()}
        rows = np.full((n, _NCOL), np.nan)
        rows[:, _COL["seq"]] = np.arange(es.seq, es.seq + n)
        rows[:, _COL["test_time_second"]] = t
        rows[:, _COL["unix_time_second"]] = es.unix_origin + t
        rows[:, _COL["step_time_second"]] = st
        for name in _BLOCK_TO_JOURNAL:
            a = cols.get(name)
            if a is not None:
                rows[:, _COL[name]] = a
        rows[:, _COL["cycle_count"]] = es.cycle_count
        rows[:, _COL["step_count"]] = es.step_count
        rows[:, _COL["step_id"]] = step.step_id
        self.journal.stage_samples(self.name, rows)
        es.seq += n
        if not isinstance(step, Impedance):
            i = np.asarray(cols["current_ampere"], dtype=np.float64)
            if es.last_t is not None:
                tt = np.concatenate(([es.last_t], t))
                ii = np.concatenate(([es.last_i], i))
            else:
                tt, ii = t, i
            dq = float(np.sum(0.5 * (ii[1:] + ii[:-1]) * np.diff(tt))) if len(tt) > 1 else 0.0
            es.step_charge += dq
            es.total_charge += dq
            es.last_t, es.last_i = float(t[-1]), float(i[-1])
        es.test_time = float(t[-1])
        es.step_time = float(st[-1])
        v = cols.get("voltage_volt")
        if v is not None and len(v) and v[-1] == v[-1]:  # not NaN
            es.last_voltage = float(v[-1])
        if self.operators:
            view = {name: rows[:, k] for name, k in _COL.items()}
            for op in tuple(self.operators):  # (a failing operator leaves the list)
                self._metrics(self._feed(op, "samples", view))
        self._notify("block", n)
        return trip

    def _take_sample(self, step: Step, cols: dict[str, np.ndarray], seg_t0: float, seg_st0: float) -> Trip | None:
        """_take_block for a block of one sample (real-time acquisition): the same checks, row,
        charge integration and counters, on Python floats instead of array operations."""
        es = self.es
        t = float(cols["test_time_second"][0])
        sta = cols.get("step_time_second")
        if sta is None:
            st = seg_st0 + (t - seg_t0)
            sta = np.array((st,))
        else:
            st = float(sta[0])
        trip = self.safety.check(step.limits, cols, sta)
        row = [math.nan] * _NCOL
        row[_SEQ] = es.seq
        row[_T] = t
        row[_UNIX] = es.unix_origin + t
        row[_ST] = st
        for name, k in _BLOCK_TO_JOURNAL_COL:
            a = cols.get(name)
            if a is not None:
                row[k] = a[0]
        row[_CYCLE] = es.cycle_count
        row[_STEP] = es.step_count
        row[_STEP_ID] = step.step_id
        rows = np.array((row,), dtype=np.float64)
        self.journal.stage_samples(self.name, rows)
        es.seq += 1
        if not isinstance(step, Impedance):
            i = float(cols["current_ampere"][0])
            if es.last_t is not None:
                dq = 0.5 * (i + es.last_i) * (t - es.last_t)
                es.step_charge += dq
                es.total_charge += dq
            es.last_t, es.last_i = t, i
        es.test_time = t
        es.step_time = st
        v = float(row[_V])
        if v == v:  # not NaN
            es.last_voltage = v
        if self.operators:
            view = {name: rows[:, k] for name, k in _COL.items()}
            for op in tuple(self.operators):  # (a failing operator leaves the list)
                self._metrics(self._feed(op, "samples", view))
        self._notify("block", 1)
        return trip

    async def _interrupted(self) -> None:
        st = self.sm.state
        if self._skip and st == State.RUNNING:
            self._do_skip()
            await self._commit_now()
        elif st in (State.STOPPING, State.ABORTED):
            await self._safe()
            self._end_step("stop")
        elif st == State.PAUSING:
            pass  # the main loop puts the channel in its safe state and records the pause
        self.journal.touch(self.name)

    def _do_skip(self) -> None:
        self._skip = False
        if self.es.in_step:
            self._emit("skip", {"pc": self.es.pc})
            self._end_step("skip")
            self.es.pc += 1
        self.journal.touch(self.name)

    async def _end_run(self, status: str, action: str | None) -> None:
        await self._safe()
        if self.es.in_step:
            self._end_step("stop")
        if status == "stopped":
            self._emit("stop", {})
        elif status == "aborted":
            self._emit("abort", {})
        if action is not None:
            self.sm.apply(action)
        self.es.status = status
        self._emit("run_end", {"status": status})
        await self.journal.flush()

    async def _commit_now(self) -> None:
        """Commit what this channel did (run start, pause, resume, skip): at once at max speed; in
        wall-clock runs by waking the background committer (acquisition never waits for the disk)."""
        if self.inline_commits:
            await self.journal.commit()
        else:
            self.journal.kick()

    async def _safe(self) -> None:
        try:
            await self.channel.safe_state()
        except Exception:  # noqa: BLE001 - best effort; the fault is recorded by the caller
            log.exception("channel %s: safe_state failed", self.name)

    async def _fault(self, message: str, kind: str, commit: bool = True, at: float | None = None) -> None:
        await self._safe()
        if self.sm.can("fault"):
            self.sm.apply("fault")
        self.es.status = "faulted"
        self.es.fault = message
        self.es.fault_kind = kind
        if not commit or self.journal.failed is not None:
            return
        if self.es.in_step:
            self._end_step("fault", at=at)
        self._emit("fault", {"message": message, "kind": kind}, at=at)
        self._emit("run_end", {"status": "faulted"}, at=at)
        try:
            await self.journal.flush()
        except JournalError as exc:
            self.es.fault = f"{message}; and {exc}"


_CAPACITY_KEYS = tuple(k for base in ("charge", "discharge")
                       for k in (f"{base}_capacity_ah", f"{base}_capacity", f"specific_{base}_capacity_mah_g"))


def _reversible_key(row: dict, cell_kind: str) -> str:
    """The capacity that counts as reversible: desodiation (charge) for anode half cells."""
    base = "charge" if cell_kind == "anode_half_cell" else "discharge"
    for k in (f"{base}_capacity_ah", f"{base}_capacity", f"specific_{base}_capacity_mah_g"):
        if k in row:
            return k
    return f"{base}_capacity_ah"


def _json(data: dict[str, Any]) -> str:
    """The JSON text of an event's or a metric row's data: NaN and ±inf as null, numpy values as
    numbers (orjson; what it does not take goes through _clean and the standard library)."""
    try:
        return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:
        return json.dumps(_clean(data), allow_nan=False)


def _clean(o: Any) -> Any:
    """JSON-ready: numpy scalars/arrays to Python, NaN/inf to None (the journal never holds NaN)."""
    if o is None or isinstance(o, (str, bool, int)):
        return o
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, np.ndarray)):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o
