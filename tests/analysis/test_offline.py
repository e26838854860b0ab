"""A journal on disk written as the engine writes it (live operators feeding the metrics table), then
`analyze_journal` and `cyclerctl analyze RUN_DIR` replay it: the same rows, and the metric tables."""

import math

import pytest

from cyclerctl.analysis.offline import analyze_journal, read_metric_table
from cyclerctl.cli import main
from cyclerctl.store import read
from cyclerctl.store.journal import connect

# differences of near-equal values (hysteresis of ~1 V means, irreversible capacity of equal half
# cycles): absolute tolerances of a few ulps of the terms; every other float 1e-12 relative
NEAR_ZERO = {"voltage_hysteresis_volt": 1e-14, "cumulative_irreversible_capacity_ah": 1e-18}


def close(a, b, field=""):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], k) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, field) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=NEAR_ZERO.get(field, 0.0))
    return a == b


def test_replay_gives_the_live_rows(mixed_run):
    d, live = mixed_run
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


def test_analyze_command_writes_metric_tables_and_a_summary(mixed_run, capsys):
    d, live = mixed_run
    assert main(["analyze", str(d)]) == 0
    out = capsys.readouterr().out
    assert "[ch1]" in out and "cycle: 4 cycles" in out and "CE of cycle 3 100.000 %" in out and "gitt: 3 pulses, 2 valid" in out
    cycles = read_metric_table(d / "metrics" / "cycle.parquet")
    assert [r["cycle_count"] for r in cycles] == [1, 2, 3, 4]
    assert cycles[0]["ch"] == "ch1"
    gitt = read_metric_table(d / "metrics" / "gitt.parquet")
    assert [r["valid"] for r in gitt] == [False, True, True]  # the first pulse: OCV curvature unknown
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
