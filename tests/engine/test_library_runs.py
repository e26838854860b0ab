"""Every shipped protocol runs to completion on the simulator at max speed, noise on, with the live
analysis: no safety trip, no fault, every step of the program run.

The long-cycling protocols (hundreds to thousands of cycles, 1.2-2.4 M samples) run with each loop
cut to its first LOOP_CAP iterations (the same steps, fewer repeats); every other protocol runs
whole (together about 600,000 samples)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers import journal, kinds, session

from cyclerctl.paths import data_dir
from cyclerctl.program import LoopStart, Program
from cyclerctl.protocol import compile_file
from cyclerctl.protocol.commands import default_preset

LIBRARY = sorted(data_dir("protocols").glob("*.yaml"))
LONG = {"hc_formation_cycling", "hc_formation_until_stable", "snhc_long_cycling_1p7", "snhc_long_cycling_4p2"}
LOOP_CAP = 3
KNOWN: dict[str, str] = {}  # stem -> reason, for a protocol known not to complete (strict xfail)


def capped(program: Program, n: int) -> Program:
    """The program with every loop run at most `n` times (count and at_most capped)."""
    ins = tuple(dataclasses.replace(i, count=None if i.count is None else min(i.count, n),
                                    at_most=None if i.at_most is None else min(i.at_most, n))
                if isinstance(i, LoopStart) else i for i in program.instructions)
    return dataclasses.replace(program, instructions=ins)


def test_the_cut_ones_are_long_cycling() -> None:
    """Only protocols of a hundred cycles or more are cut."""
    assert LONG <= {p.stem for p in LIBRARY}
    for p in LIBRARY:
        if p.stem in LONG:
            loops = [i for i in compile_file(p).instructions if isinstance(i, LoopStart)]
            assert max(i.count or i.at_most or 1 for i in loops) >= 100, p.stem


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(reason=KNOWN[p.stem], strict=True))
                                  if p.stem in KNOWN else p for p in LIBRARY], ids=lambda p: p.stem)
async def test_shipped_protocol_completes_on_the_simulator(path: Path, tmp_path) -> None:
    program = compile_file(path)
    if path.stem in LONG:
        program = capped(program, LOOP_CAP)
    run_dir = tmp_path / "run"
    s = session(run_dir, [program], instrument=f"sim:{default_preset(program.cell)}",
                options={"seed": 7, "noise": True}, analysis=True)
    assert await s.execute() == {"ch1": "done"}, s.runners["ch1"].es.fault
    _, events, _, _ = journal(run_dir)
    assert "safety_trip" not in kinds(events) and "fault" not in kinds(events)
    assert events[-1].kind == "run_end" and events[-1].data == {"status": "complete"}
    started = {e.data["pc"] for e in events if e.kind == "step_start"}
    steps = {k for k, i in enumerate(program.instructions) if not isinstance(i, LoopStart)
             and type(i).__name__ != "LoopEnd"}
    jumped = {k for k, i in enumerate(program.instructions) if any(e.goto is not None for e in getattr(i, "ends", ()))}
    assert started == steps or jumped, f"steps never started: {sorted(steps - started)}"
