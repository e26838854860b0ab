"""A journal on disk written as the engine writes it (live operators feeding the metrics table), then
`analyze_journal` and `cyclerctl analyze RUN_DIR` replay it: the same rows, and the metric tables."""

import dataclasses
import json
import math
import pickle

import numpy as np
import pytest

from cyclerctl.analysis.live import default_operators
from cyclerctl.analysis.offline import analyze_journal, read_metric_table
from cyclerctl.analysis.synthetic import mixed_stream
from cyclerctl.cli import main
from cyclerctl.program import Cell, Limits, Program
from cyclerctl.store import read, schema
from cyclerctl.store.journal import Journal, connect

CELL = Cell(active_mass=3.4e-6, nominal_specific_capacity=300 * 3600.0, particle_radius=3.5e-6)
PROGRAM = Program(name="analysis check", instructions=(), cell=CELL, safety=Limits(), retention_reference_cycle=2)


def write_journal(run_dir):
    """Journal the mixed stream like the engine: samples, events and the live operators' metrics,
    committed every few items. Returns the live metric rows."""
    run_dir.mkdir()
    j = Journal(run_dir / "journal.sqlite")
    j.add_channel("ch1", "run1", {"cell": dataclasses.asdict(CELL)}, pickle.dumps(PROGRAM),
                  lambda: ("running", "{}", None))
    ops = default_operators(PROGRAM)
    live, seq, eseq = [], 0, 0
    col = {c: k for k, c in enumerate(schema.SAMPLE_COLUMNS)}

    def stage_metrics(rows):
        for r in rows:
            j.stage_metric("ch1", (len(live), r.kind, r.data.get("test_time_second"), r.data.get("cycle_count"),
                                   json.dumps(r.data, allow_nan=False)))
            live.append(r)

    for n, (kind, item) in enumerate(mixed_stream()):
        if kind == "samples":
            m = item["voltage_volt"].size
            rows = np.full((m, len(schema.SAMPLE_COLUMNS)), np.nan)
            rows[:, col["seq"]] = np.arange(seq, seq + m)
            for name, a in item.items():
                rows[:, col[name]] = a
            rows[:, col["step_id"]] = item["step_count"]
            j.stage_samples("ch1", rows)
            seq += m
            view = {name: rows[:, k] for name, k in col.items()}
            for op in ops:
                stage_metrics(op.feed_samples(view))
        else:
            e = item
            j.stage_event("ch1", (eseq, e.kind, e.test_time_second, None, e.cycle_count, e.step_count, e.sample_seq,
                                  json.dumps(e.data)))
            eseq += 1
            for op in ops:
                stage_metrics(op.feed_event(e))
        if n % 5 == 0:
            j.commit_sync()
    j.commit_sync()
    j.close()
    return live


def close(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    return a == b


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs") / "run1"
    live = write_journal(d)
    return d, live


def test_replay_gives_the_live_rows(run_dir):
    d, live = run_dir
    offline = analyze_journal(d)
    replayed = [r for kind in offline.values() for r in kind]
    assert sorted(r.kind for r in replayed) == sorted(r.kind for r in live)
    for kind in offline:
        mine = [r for r in live if r.kind == kind]
        assert len(mine) == len(offline[kind])
        for a, b in zip(mine, offline[kind], strict=True):
            assert close(a.data, b.data), kind
    # and the metrics table of the journal holds the same rows
    conn = connect(d / "journal.sqlite", readonly=True)
    stored = read.metrics(conn, "ch1")
    conn.close()
    assert len(stored) == len(live)
    cyc = [r for r in stored if r["kind"] == "cycle"]
    third = offline["cycle"][2].data
    assert cyc[2]["capacity_retention"] == pytest.approx(third["capacity_retention"], rel=1e-12)
    assert third["reference_cycle"] == 2
    assert third["capacity_retention"] == pytest.approx(1.0, rel=1e-6)  # cycles 2 and 3 are alike


def test_analyze_command_writes_metric_tables_and_a_summary(run_dir, capsys):
    d, live = run_dir
    assert main(["analyze", str(d)]) == 0
    out = capsys.readouterr().out
    assert "[ch1]" in out and "cycle: 4 cycles" in out and "CE of cycle 3 100.000 %" in out and "gitt: 3 pulses, 3 valid" in out
    cycles = read_metric_table(d / "metrics" / "cycle.parquet")
    assert [r["cycle_count"] for r in cycles] == [1, 2, 3, 4]
    assert cycles[0]["ch"] == "ch1"
    gitt = read_metric_table(d / "metrics" / "gitt.parquet")
    assert all(r["valid"] for r in gitt)
    assert isinstance(gitt[0]["flags"], list)
    eis = read_metric_table(d / "metrics" / "eis.parquet")
    assert len(eis[0]["frequency_hertz"]) == 50


def test_bad_run_directories_give_one_line_errors(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    assert "no such run directory or file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty")]) == 2
    assert "no run journal" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "journal.sqlite").write_text("this is not a database")
    assert main(["analyze", str(bad)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
