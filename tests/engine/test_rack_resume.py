"""Resume of a real-time rack whose engine state is journaled at most once per
channel_state_interval: the process (wall clock, several channels) is killed with SIGKILL while
commits carry samples but no state rows; resume takes the samples after each channel's last state row
into its engine state (seq, times, charge) and continues. Every sample is in the journal exactly
once and the charge counted by the engine equals the charge integrated over the journaled samples."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_contiguous

from cyclerctl.engine.session import RunSettings, Session
from cyclerctl.store import read
from cyclerctl.store.journal import connect

CHANNELS = ("r1", "r2", "r3")

SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from cyclerctl.engine.session import ChannelPlan, RunSettings, Session
    from cyclerctl.program import ConstantCurrent, End, Limits, Program, Record, Rest
    from cyclerctl.sim import load_preset

    cell = load_preset("hard_carbon").default_cell
    limits = Limits(voltage_min=-0.05, voltage_max=3.0, current_max=0.01)
    steps = (ConstantCurrent(step_id=0, name="CC", current=-1e-4, ends=(End("step_time", ">=", 3600.0),),
                             record=Record(every=0.5), limits=limits, direction=-1),
             Rest(step_id=1, name="rest", ends=(End("step_time", ">=", 60.0),), record=Record(every=5.0)))
    program = Program(name="rack", instructions=steps, cell=cell, safety=limits)
    plans = [ChannelPlan(ch, program, "sim:hard_carbon", {"noise": False}) for ch in sys.argv[2:]]
    settings = RunSettings(speed=10.0, export=(), analysis=True, commit_interval=0.05,
                           channel_state_interval=3600.0, start_spread=0.2)
    asyncio.run(Session.create(plans, settings, sys.argv[1]).execute())
""")


def max_seq(db: Path) -> dict[str, int]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            return dict(conn.execute("SELECT ch, MAX(seq) FROM samples GROUP BY ch").fetchall())
        finally:
            conn.close()
    except sqlite3.Error:
        return {}


@pytest.mark.slow
def test_kill_a_rack_between_state_rows_and_resume(tmp_path):
    run_dir = tmp_path / "rack"
    script = tmp_path / "rack.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), *CHANNELS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until every channel has samples committed after its state row
            seqs = max_seq(run_dir / "journal.sqlite")
            if len(seqs) == len(CHANNELS) and min(seqs.values()) >= 40:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the rack did not get going: {proc.stderr.read1().decode() if proc.poll() else ''}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    conn = connect(run_dir, readonly=True)
    try:
        before = {ch: read.engine_state(conn, ch)[0]["seq"] for ch in CHANNELS}
        journaled = {ch: conn.execute("SELECT COUNT(*) FROM samples WHERE ch=?", (ch,)).fetchone()[0]
                     for ch in CHANNELS}
    finally:
        conn.close()
    # the crash left samples beyond every channel's state row: the case under test
    assert all(journaled[ch] > before[ch] for ch in CHANNELS), (journaled, before)

    session = Session.resume(run_dir, settings=RunSettings(export=(), analysis=True))
    for ch in CHANNELS:
        assert session.runners[ch].es.seq == journaled[ch]  # rolled forward over the journaled samples
    assert asyncio.run(session.execute()) == {ch: "done" for ch in CHANNELS}

    conn = connect(run_dir, readonly=True)
    try:
        for ch in CHANNELS:
            assert_contiguous(read.samples(conn, ch), read.events(conn, ch))
            es, _ = read.engine_state(conn, ch)
            t, i, step = np.array(conn.execute(
                "SELECT test_time_second, current_ampere, step_count FROM samples WHERE ch=? ORDER BY seq",
                (ch,)).fetchall()).T
            charge = sum(float(np.sum(0.5 * (i[step == k][1:] + i[step == k][:-1]) * np.diff(t[step == k])))
                         for k in np.unique(step))
            assert es["total_charge"] == pytest.approx(charge, rel=1e-9)
            assert es["total_charge"] < 0  # the CC discharge went through the kill
            steps = [e for e in read.events(conn, ch) if e.kind == "step_end"]
            assert [e.data.get("step_id") for e in steps] == [0, 1]
    finally:
        conn.close()
