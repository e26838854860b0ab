"""Operator actions through RunControl: pause (safe state, timers held), resume, skip, stop, abort;
each validated against the state machine and written to the audit table."""

from __future__ import annotations

import asyncio

import numpy as np
from helpers import assert_contiguous, journal, kinds, session
from programs import cycling


def on(s, when, action):
    """Call `action(control)` (a coroutine function) once, when `when(kind, payload)` first holds."""
    fired = []

    def cb(ch, kind, payload):
        if not fired and when(kind, payload):
            fired.append(asyncio.get_running_loop().create_task(action(s.control)))

    s.listeners.append(cb)
    return fired


def nth_block(n):
    count = [0]

    def when(kind, payload):
        if kind == "block":
            count[0] += 1
        return count[0] >= n

    return when


def event_is(name):
    return lambda kind, payload: kind == "event" and payload.kind == name


async def test_pause_then_resume_holds_the_step_timer(run_dir):
    s = session(run_dir, [cycling(2)], options={"block_samples": 4})
    results = []
    on(s, nth_block(3), lambda c: _record(results, c.pause("ch1", actor="alice", source="test", request_id="r1")))
    on(s, event_is("pause"), lambda c: _record(results, c.resume("ch1", actor="alice", source="test")))
    assert await s.execute() == {"ch1": "done"}
    assert results[0][0] and "running -> pausing" in results[0][1]
    assert results[1][0] and "paused -> running" in results[1][1]
    samples, events, audit, _ = journal(run_dir)
    assert_contiguous(samples, events)
    k = kinds(events)
    i = k.index("pause")
    assert k[i + 1] == "resume"  # no step ended or started while paused
    assert s.runners["ch1"].channel.safe_calls >= 1
    # the step time continues where it was (no jump) and the step still ends at its cutoff
    st = samples["step_time_second"][samples["step_count"] == 2]
    assert np.all(np.diff(st) > 0) and np.allclose(np.diff(st)[:-1], 10.0)
    assert [(a["action"], a["actor"], a["result"].split(":")[0]) for a in audit] == [
        ("pause", "alice", "ok"), ("resume", "alice", "ok")]
    assert audit[0]["request_id"] == "r1" and audit[0]["source"] == "test"


async def _record(results, coro):
    results.append(await coro)


async def test_skip_ends_the_step_and_goes_on(run_dir):
    s = session(run_dir, [cycling(2)], options={"block_samples": 4})
    on(s, nth_block(4), lambda c: c.skip("ch1", actor="bob"))
    await s.execute()
    samples, events, audit, _ = journal(run_dir)
    assert_contiguous(samples, events)
    ends = [e.data["reason"] for e in events if e.kind == "step_end"]
    assert ends[1] == "skip" and ends.count("skip") == 1
    assert "skip" in kinds(events)
    assert sum(e.kind == "step_start" for e in events) == 5
    assert audit[0]["action"] == "skip"


async def test_stop_finishes_cleanly(run_dir):
    s = session(run_dir, [cycling(3)], options={"block_samples": 4})
    on(s, nth_block(5), lambda c: c.stop("ch1"))
    assert await s.execute() == {"ch1": "done"}
    _, events, _, _ = journal(run_dir)
    assert kinds(events)[-3:] == ["step_end", "stop", "run_end"]
    assert events[-3].data["reason"] == "stop" and events[-1].data == {"status": "stopped"}
    assert s.runners["ch1"].channel.output_on is False
    assert s.status == "stopped"


async def test_abort_goes_safe_at_once(run_dir):
    s = session(run_dir, [cycling(3)], options={"block_samples": 4})
    on(s, nth_block(5), lambda c: c.abort("ch1", actor="carol"))
    assert await s.execute() == {"ch1": "aborted"}
    _, events, audit, _ = journal(run_dir)
    assert kinds(events)[-2:] == ["abort", "run_end"] and events[-1].data == {"status": "aborted"}
    assert s.runners["ch1"].channel.output_on is False
    assert audit[-1]["action"] == "abort" and audit[-1]["result"].startswith("ok")


async def test_refused_actions_are_audited(run_dir):
    s = session(run_dir, [cycling(1)], options={"block_samples": 4})
    results = []

    async def three(c):
        results.append(await c.resume("ch1", actor="eve"))
        results.append(await c.pause("nope"))
        results.append(await c.act("explode", "ch1"))

    on(s, nth_block(2), three)
    await s.execute()
    assert [ok for ok, _ in results] == [False, False, False]
    assert "cannot resume a channel that is running" in results[0][1]
    assert "no channel 'nope'" in results[1][1]
    assert "unknown action" in results[2][1]
    _, _, audit, _ = journal(run_dir)
    assert all(a["result"].startswith("refused") for a in audit) and len(audit) == 3


async def test_pause_interrupts_a_wall_clock_wait(run_dir):
    # 10 s records at speed 200: one sample every 50 ms of wall time, one per block; a small cell
    s = session(run_dir, [cycling(1)], options={"block_samples": 1, "capacity": 0.2}, speed=200.0,
                max_block_span=10.0)
    on(s, nth_block(3), lambda c: c.pause("ch1"))

    async def later(c):
        await asyncio.sleep(0.3)  # paused for 0.3 s wall = 60 s of test time
        await c.resume("ch1")

    on(s, event_is("pause"), later)
    assert await s.execute() == {"ch1": "done"}
    samples, events, _, _ = journal(run_dir)
    assert_contiguous(samples, events)
    pause = next(e for e in events if e.kind == "pause")
    resume = next(e for e in events if e.kind == "resume")
    assert resume.test_time_second >= pause.test_time_second + 40  # test time went on while paused
    st = samples["step_time_second"][samples["step_count"] == 1]
    assert np.all(np.diff(st) > 0) and np.max(np.diff(st)) <= 10.0 + 1e-9  # the step timer did not
