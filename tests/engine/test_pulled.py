"""Simulated channels on a wall clock are pulled by clock callbacks (no task switch per sample):
operator actions, safety trips and step ends behave as on the awaited path (each test runs on both)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from helpers import assert_contiguous, journal, kinds
from programs import SAFETY, rest
from test_control import event_is, on

from cyclerctl.engine.runner import ChannelRunner
from cyclerctl.engine.session import ChannelPlan, RunSettings, Session
from cyclerctl.program import ConstantCurrent, End, Limits, Program, Record
from cyclerctl.sim import load_preset
from cyclerctl.sim.channel import SimChannel

CELL = load_preset("hard_carbon").default_cell


def program(limits=SAFETY, current=-1e-4, seconds=200.0):
    cc = ConstantCurrent(step_id=1, name="CC", current=current, ends=(End("step_time", ">=", seconds),),
                         record=Record(every=1.0), limits=limits, direction=-1 if current < 0 else 1)
    return Program(name="pulled", instructions=(rest(0, 5.0, every=1.0), cc, rest(2, 20.0, every=1.0)),
                   cell=CELL, safety=SAFETY)


@pytest.fixture(params=["pulled", "pushed"])
def counted(request, monkeypatch):
    """Run the test on the pulled path and, for comparison, on the awaited one (pull_step hidden);
    counts the steps each path ran."""
    if request.param == "pushed":
        monkeypatch.setattr(SimChannel, "pull_step", None)
    calls = {"path": request.param, "pulled": 0, "pushed": 0}
    for name in ("pulled", "pushed"):
        orig = getattr(ChannelRunner, f"_{name}")

        def wrapped(self, *a, _orig=orig, _name=name, **k):
            calls[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(ChannelRunner, f"_{name}", wrapped)
    return calls


def make(run_dir, prog, n=2, speed=100.0):
    plans = [ChannelPlan(f"ch{k + 1}", prog, "sim:hard_carbon", {"noise": False}) for k in range(n)]
    return Session.create(plans, RunSettings(speed=speed, export=(), analysis=False, commit_interval=0.02,
                                             max_block_span=1.0), run_dir)


async def test_pause_resume_and_skip_on_pulled_channels(run_dir, counted):
    s = make(run_dir, program())
    on(s, lambda kind, p: kind == "block" and s.runners["ch1"].es.step_count == 2
       and s.runners["ch1"].es.step_time > 20, lambda c: c.pause("ch1"))

    async def later(c):
        await asyncio.sleep(0.3)  # 0.3 s of wall time = 30 s of test time with the output off
        await c.resume("ch1")

    on(s, event_is("pause"), later)
    fired = []

    def skip_ch2(ch, kind, payload):
        if not fired and ch == "ch2" and kind == "block" and s.runners["ch2"].es.step_count == 2 \
                and s.runners["ch2"].es.step_time > 10:
            fired.append(asyncio.get_running_loop().create_task(s.control.skip("ch2")))

    s.listeners.append(skip_ch2)
    assert await s.execute() == {"ch1": "done", "ch2": "done"}
    other = "pushed" if counted["path"] == "pulled" else "pulled"
    assert counted[counted["path"]] >= 6 and counted[other] == 0  # every step of both channels took the path

    samples, events, audit, _ = journal(run_dir, "ch1")
    assert_contiguous(samples, events)
    k = kinds(events)
    assert k[k.index("pause") + 1] == "resume"
    pause = next(e for e in events if e.kind == "pause")
    resume = next(e for e in events if e.kind == "resume")
    assert resume.test_time_second >= pause.test_time_second + 20  # test time went on while paused
    st = samples["step_time_second"][samples["step_count"] == 2]
    # the step timer held through the pause: the sample taken at the resume has the step time of the
    # last one before the pause (the pause is not step time), the others are 1 s apart
    assert np.all(np.diff(st) >= 0) and np.max(np.diff(st)) <= 1.0 + 1e-9 and np.sum(np.diff(st) == 0) == 1
    assert st[-1] == pytest.approx(200.0)  # and the step ended at its cutoff

    samples2, events2, _, _ = journal(run_dir, "ch2")
    assert_contiguous(samples2, events2)
    ends = [e.data for e in events2 if e.kind == "step_end"]
    assert [e["reason"] for e in ends] == ["end", "skip", "end"]
    assert samples2["step_time_second"][samples2["step_count"] == 2].max() < 200.0
    assert sorted(a["action"] for a in audit) == ["pause", "resume", "skip"]


async def test_a_pulled_channel_trips_on_its_limit(run_dir, counted):
    tight = Limits(voltage_min=0.5, voltage_max=3.0, current_max=5e-3)  # the discharge crosses 0.5 V
    s = make(run_dir, program(limits=tight, current=-2e-3, seconds=3600.0), n=1, speed=1000.0)
    assert await s.execute() == {"ch1": "faulted"}
    assert counted[counted["path"]] >= 2
    samples, events, _, _ = journal(run_dir)
    assert_contiguous(samples, events)
    trip = next(e for e in events if e.kind == "safety_trip")
    assert trip.data["limit"] == "voltage_min"
    v = samples["voltage_volt"][samples["step_count"] == 2]
    assert v[-1] < 0.5 and np.sum(v < 0.5) <= 2  # tripped within the debounce, nothing after
    assert s.runners["ch1"].es.fault_kind == "safety"
