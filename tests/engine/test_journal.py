"""The journal: a disk that fills up (SQLite's max_page_count makes the database really full, SQLITE_FULL)
puts the channel in its safe state and stops with a clear message; `resume` then continues from the
committed state and ends with the same data as an uninterrupted run."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from helpers import assert_contiguous, journal, session
from programs import cycling

from cyclerctl.engine.session import Session
from cyclerctl.errors import ConfigError, JournalError
from cyclerctl.store import read
from cyclerctl.store.journal import connect


def cycle_table(run_dir):
    _, _, _, metrics = journal(run_dir)
    rows = [m for m in metrics if m["kind"] == "cycle"]
    keys = ("cycle_count", "discharge_capacity_ah", "charge_capacity_ah", "coulombic_efficiency")
    return np.array([[float(r[k]) for k in keys] for r in rows])


async def test_schema_and_pragmas(run_dir):
    s = session(run_dir, [cycling(1)])
    await s.execute()
    conn = sqlite3.connect(run_dir / "journal.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "channels", "samples", "events", "metrics", "engine_state", "audit", "outbox",
            "programs"} <= tables
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta["schema_version"] == "1" and json.loads(meta["run_json"])["run_id"] == meta["run_id"]
    state, engine, blob = conn.execute("SELECT state, engine, channel_state FROM engine_state").fetchone()
    assert state == "done" and json.loads(engine)["status"] == "complete" and 0 <= json.loads(blob)["x"] < 0.1
    desc = json.loads(conn.execute("SELECT descriptor FROM channels").fetchone()[0])
    assert desc["instrument"] == "rc:a" and desc["columns"]["voltage_volt"] == "V"


async def test_disk_full_goes_safe_then_resume_completes(run_dir, tmp_path):
    ref = tmp_path / "ref"
    await session(ref, [cycling(4)], analysis=True, options={"block_samples": 20}).execute()

    s = session(run_dir, [cycling(4)], analysis=True, options={"block_samples": 20}, commit_interval=0.0)
    conn = s.journal.connection
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 6}")
    result = await s.execute()
    assert result == {"ch1": "faulted"}
    assert isinstance(s.journal.failed, JournalError)
    msg = str(s.journal.failed)
    assert "full" in msg and "cyclerctl resume" in msg and "\n" not in msg
    assert s.runners["ch1"].channel.output_on is False
    assert json.loads((run_dir / "run.json").read_text())["status"] == "faulted"
    committed, events, _, _ = journal(run_dir)
    assert 0 < len(committed["seq"]) < len(journal(ref)[0]["seq"])
    assert_contiguous(committed, events)

    again = Session.resume(run_dir, settings=s.settings)
    assert await again.execute() == {"ch1": "done"}
    samples, events, _, _ = journal(run_dir)
    assert_contiguous(samples, events)
    want, _, _, _ = journal(ref)
    assert len(samples["seq"]) == len(want["seq"])
    for col in ("test_time_second", "voltage_volt", "current_ampere", "cycle_count", "step_count"):
        np.testing.assert_allclose(samples[col], want[col], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cycle_table(run_dir), cycle_table(ref), rtol=1e-9)
    assert len(cycle_table(ref)) >= 3


async def test_resume_refuses_other_directories(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        Session.resume(tmp_path)
    with pytest.raises(ConfigError, match="already holds a run"):
        run = tmp_path / "r"
        await session(run, [cycling(1)]).execute()
        session(run, [cycling(1)])


async def test_readers_see_committed_rows_only(run_dir):
    s = session(run_dir, [cycling(1)])
    await s.execute()
    conn = connect(run_dir, readonly=True)
    parts = list(read.iter_samples(conn, "ch1", chunk=100))
    assert sum(len(p["seq"]) for p in parts) == len(read.samples(conn, "ch1")["seq"])
    stream = list(read.replay(conn, "ch1", chunk=50))
    seqs = np.concatenate([c["seq"] for k, c in stream if k == "samples"])
    assert np.array_equal(seqs, np.arange(len(seqs)))
    # every event comes right before the sample it points at
    pos = 0
    for k, item in stream:
        if k == "samples":
            pos = int(item["seq"][-1]) + 1 if len(item["seq"]) else pos
        else:
            assert item.sample_seq == pos


async def test_flush_callers_share_the_committers_next_commit(tmp_path):
    """Channels that end at the same moment wait for one commit between them, not one each; every
    flush returns with its rows on disk."""
    import asyncio

    from cyclerctl.store import schema
    from cyclerctl.store.journal import Journal

    j = Journal(tmp_path / "journal.sqlite", commit_interval=30.0)  # only kicks make the committer commit
    names = [f"c{k}" for k in range(12)]
    for ch in names:
        j.add_channel(ch, "run", {}, None, lambda *_: ("running", "{}", None))
    stop = asyncio.Event()
    committer = asyncio.create_task(j.run_committer(stop))
    await asyncio.sleep(0)
    row = np.zeros((1, len(schema.SAMPLE_COLUMNS)))

    async def end(ch):
        j.stage_samples(ch, row.copy())
        await j.flush()
        return j.connection.execute("SELECT COUNT(*) FROM samples WHERE ch=?", (ch,)).fetchone()[0]

    counts = await asyncio.gather(*(end(ch) for ch in names))
    stop.set()
    j.kick()
    await committer
    assert counts == [1] * len(names)
    assert j.commits <= 2
    j.close()
