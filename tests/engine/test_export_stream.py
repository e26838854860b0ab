"""BDF exports written while the run goes (store/stream.py): the files a run leaves are the same bytes
as `export_run` writes from the finished journal — across several row groups, when a column first
holds a value late in the run (then that channel is exported from the journal), and after a run that
stopped on a full disk, left stale partial files behind and was resumed."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import assert_contiguous, journal, session
from programs import cycling, nested_program

from cyclerctl.engine.session import Session
from cyclerctl.store import export, schema
from cyclerctl.store.export import export_run
from cyclerctl.store.journal import Journal
from cyclerctl.store.stream import ExportStream, partial_files

FORMATS = ("bdf-parquet", "bdf-csv")


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(export, "CHUNK", 64)  # several row groups and a partial last one


def exported_bytes(run_dir):
    files = sorted(p for p in run_dir.rglob("*") if p.suffix in (".parquet", ".csv", ".json")
                   and p.name != "run.json")
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in files}


def same_as_export_run(run_dir, tmp_path):
    """The run's files, then export_run of a copy of its journal: byte for byte the same."""
    streamed = exported_bytes(run_dir)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("journal.sqlite", "journal.sqlite-wal", "run.json"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, copy / name)
    export_run(copy, formats=FORMATS)
    rebuilt = exported_bytes(copy)
    assert sorted(streamed) == sorted(rebuilt)
    for name in rebuilt:
        assert streamed[name] == rebuilt[name], name
    return streamed


async def test_streamed_files_equal_export_of_the_journal(run_dir, tmp_path, small_chunks):
    s = session(run_dir, [cycling(3)], analysis=True, export=FORMATS, options={"block_samples": 7})
    assert await s.execute() == {"ch1": "done"}
    assert s.export_stream.channels["ch1"].fallback == ""  # written while running, not at the end
    files = same_as_export_run(run_dir, tmp_path)
    assert "ch1.bdf.parquet" in files and "ch1.bdf.csv" in files and "metrics/cycle.parquet" in files
    assert [p.name for p in s.exported][:3] == ["ch1.bdf.parquet", "ch1.bdf.csv", "ch1.metadata.json"]
    samples, _, _, _ = journal(run_dir)
    meta = pq.ParquetFile(run_dir / "ch1.bdf.parquet").metadata
    assert meta.num_rows == len(samples["seq"]) > 3 * 64 and meta.num_row_groups > 3
    assert partial_files(run_dir) == []


async def test_a_column_that_appears_late_is_exported_from_the_journal(run_dir, tmp_path, small_chunks):
    s = session(run_dir, [nested_program()], export=FORMATS, options={"block_samples": 7}, commit_interval=0.0)
    assert await s.execute() == {"ch1": "done"}
    assert "first holds a value" in s.export_stream.channels["ch1"].fallback
    files = same_as_export_run(run_dir, tmp_path)
    assert b"Real Impedance / ohm" in files["ch1.bdf.csv"].splitlines()[0]
    assert partial_files(run_dir) == []


async def test_resume_after_a_full_disk_rebuilds_the_files(run_dir, tmp_path, small_chunks):
    s = session(run_dir, [cycling(4)], export=FORMATS, options={"block_samples": 20}, commit_interval=0.0)
    conn = s.journal.connection
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 6}")
    assert await s.execute() == {"ch1": "faulted"}
    assert partial_files(run_dir) == [] and not (run_dir / "ch1.bdf.csv").exists()
    # what a kill -9 leaves: partial files that hold rows the journal may not have
    (run_dir / "ch1.bdf.csv.partial").write_text("garbage\n")
    (run_dir / "ch1.bdf.parquet.partial").write_bytes(b"PAR1")

    again = Session.resume(run_dir, settings=s.settings)
    assert await again.execute() == {"ch1": "done"}
    assert again.export_stream.channels["ch1"].fallback == ""
    samples, events, _, _ = journal(run_dir)
    assert_contiguous(samples, events)
    same_as_export_run(run_dir, tmp_path)
    table = pq.read_table(run_dir / "ch1.bdf.parquet")
    assert np.array_equal(table.column("Record Index / 1").to_numpy(), samples["seq"])  # each row once
    assert partial_files(run_dir) == []


async def test_no_export_no_files(run_dir):
    s = session(run_dir, [cycling(1)])
    await s.execute()
    assert s.export_stream is None and not (run_dir / "ch1.bdf.parquet").exists()
    assert sqlite3.connect(run_dir / "journal.sqlite").execute("SELECT COUNT(*) FROM samples").fetchone()[0] > 0


def journal_rows(first: int, n: int) -> np.ndarray:
    col = {c: k for k, c in enumerate(schema.SAMPLE_COLUMNS)}
    rows = np.full((n, len(schema.SAMPLE_COLUMNS)), np.nan)
    seq = np.arange(first, first + n)
    rows[:, col["seq"]] = seq
    rows[:, col["test_time_second"]] = 0.5 * seq
    rows[:, col["voltage_volt"]] = np.where(seq % 5 == 0, np.nan, 0.1 + 1e-3 * seq)
    rows[:, col["current_ampere"]] = np.where(seq % 3 == 0, -0.0, -1.7e-3)  # a rest rounded to -0.0
    rows[:, col["cycle_count"]] = 1 + seq // 100
    rows[:, col["step_count"]] = 1 + seq // 40
    rows[:, col["step_id"]] = 1 + (seq // 40) % 2
    return rows


def streamed_journal(run, channels, sizes, **kw):
    """A journal written by the engine's writer with an export stream as its feed."""
    run.mkdir()
    journal = Journal(run / "journal.sqlite")
    journal.set_meta({"run_id": "r1"})
    for ch in channels:
        journal.add_channel(ch, "r1", {"instrument": "test"}, None, lambda *_: ("running", "{}", None))
    stream = ExportStream(run, channels, FORMATS, **kw)
    journal.feeds.append(stream)
    first = 0
    for n in sizes:
        for ch in channels:
            journal.stage_samples(ch, journal_rows(first, n))
        journal.commit_sync()
        first += n
    journal.close()
    return stream


def test_minus_zero_and_nulls_are_written_as_the_journal_returns_them(tmp_path, small_chunks):
    run = tmp_path / "run"
    stream = streamed_journal(run, ["a1"], (1, 150, 7, 90))  # commits of every size around 96 rows
    files = stream.finish()
    assert [p.name for p in files] == ["a1.bdf.parquet", "a1.bdf.csv", "a1.metadata.json"]
    same_as_export_run(run, tmp_path)
    fields = [f for line in (run / "a1.bdf.csv").read_text().splitlines()[1:] for f in line.split(",")]
    assert "0" in fields and "-0" not in fields


def test_memory_for_partial_row_groups_is_bounded(tmp_path, small_chunks):
    run = tmp_path / "run"
    stream = streamed_journal(run, ["a1", "a2", "a3"], (40, 40, 40, 40), max_buffered=150)
    files = stream.finish()
    fallback = [ch for ch, c in stream.channels.items() if c.fallback]
    assert fallback and len(fallback) < 3  # some channels kept streaming
    assert all(c.buffered == 0 for c in stream.channels.values())
    assert len([p for p in files if p.suffix == ".parquet"]) == 3
    same_as_export_run(run, tmp_path)
