"""Crash and resume: `cyclerctl run` (a real subprocess, --speed max, noise off) is killed with
SIGKILL at >= 10 random instants and resumed each time with `cyclerctl resume`. The final journal
holds every sample exactly once, step and cycle counts are continuous, and the cycle table equals
that of an uninterrupted run to 1e-9 relative."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from helpers import assert_contiguous

from cyclerctl.engine.session import ChannelPlan, RunSettings, Session
from cyclerctl.protocol import compile_file
from cyclerctl.store import read
from cyclerctl.store.journal import connect

HERE = Path(__file__).parent
PROTOCOL = HERE / "data" / "crash_long.yaml"
KILLS = 10


def cli(instrument: str) -> list[str]:
    if instrument.startswith("rc"):
        return [sys.executable, str(HERE / "rc_cli.py")]
    return [sys.executable, "-m", "cyclerctl.cli"]


def committed_samples(run_dir: Path) -> int:
    db = run_dir / "journal.sqlite"
    if not db.exists():
        return -1
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            row = conn.execute("SELECT COALESCE(MAX(seq), -1) FROM samples").fetchone()
            return int(row[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


def status(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status", "")
    except (OSError, ValueError):
        return ""


def cycle_table(run_dir: Path) -> np.ndarray:
    conn = connect(run_dir, readonly=True)
    try:
        rows = read.metrics(conn, "ch1", "cycle")
    finally:
        conn.close()
    keys = ("cycle_count", "discharge_capacity_ah", "charge_capacity_ah", "coulombic_efficiency")
    return np.array([[np.nan if r.get(k) is None else float(r[k]) for k in keys] for r in rows])


async def uninterrupted(run_dir: Path, instrument: str) -> None:
    program = compile_file(PROTOCOL)
    s = Session.create([ChannelPlan("ch1", program, instrument, {"noise": False})],
                       RunSettings(export=()), run_dir)
    assert await s.execute() == {"ch1": "done"}


@pytest.mark.slow
@pytest.mark.parametrize("instrument", ["sim:hard_carbon"])
async def test_kill_minus_9_and_resume(tmp_path, instrument):
    ref = tmp_path / "ref"
    await uninterrupted(ref, instrument)
    want = cycle_table(ref)
    assert len(want) >= 3

    run_dir = tmp_path / "run"
    rng = random.Random(20261122)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = ["run", str(PROTOCOL), "-i", instrument, "--no-noise", "--speed", "max", "--commit-interval", "0.02",
            "--out", str(run_dir),
            "--no-metrics"]
    kills, last_seen = 0, -1
    deadline = time.monotonic() + 150
    while status(run_dir) != "complete":
        proc = subprocess.Popen(cli(instrument) + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env)
        if kills >= KILLS:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()[-2000:]
            break
        # wait until this process has committed new samples, then kill it at a random instant
        while proc.poll() is None and committed_samples(run_dir) <= last_seen and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            time.sleep(rng.uniform(0.0, 0.03))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            _, err = proc.communicate()
            assert proc.returncode == 0, err.decode()[-2000:]
        last_seen = committed_samples(run_dir)
        assert time.monotonic() < deadline, "crash test took too long"
        args = ["resume", str(run_dir), "--no-metrics"]
    assert kills >= KILLS, f"the run ended after {kills} kills; make the test protocol longer"
    assert status(run_dir) == "complete"

    conn = connect(run_dir, readonly=True)
    try:
        samples = read.samples(conn, "ch1")
        events = read.events(conn, "ch1")
        n_resume = sum(1 for a in read.audit(conn) if a["action"] == "recover")
    finally:
        conn.close()
    assert_contiguous(samples, events)
    assert n_resume == 0  # no fault was needed to continue
    starts = [e for e in events if e.kind == "step_start"]
    assert [e.step_count for e in starts] == list(range(1, len(starts) + 1))
    assert [e.data["cycle_count"] for e in events if e.kind == "cycle_start"] == list(
        range(2, int(samples["cycle_count"][-1]) + 1))
    assert [e.kind for e in events].count("run_start") == 1
    got = cycle_table(run_dir)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)
    conn = connect(ref, readonly=True)
    try:
        assert len(read.samples(conn, "ch1")["seq"]) == len(samples["seq"])
    finally:
        conn.close()
    # the BDF files, written while running and rebuilt from the journal at every resume, hold every
    # sample exactly once, with the journal's values
    for table in (pq.read_table(run_dir / "ch1.bdf.parquet"), pacsv.read_csv(run_dir / "ch1.bdf.csv")):
        assert np.array_equal(table.column("Record Index / 1").to_numpy(), samples["seq"])
        np.testing.assert_array_equal(table.column("Voltage / V").to_numpy(), samples["voltage_volt"])
    assert not list(run_dir.glob("*.partial"))
