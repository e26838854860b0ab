"""The run/resume/export commands end to end (in-process CLI, RC stand-in instrument), and the BDF
exports read back by an independent reader (batterydf when installed, else pyarrow + BDF rules)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from cyclerctl.cli import main
from cyclerctl.store import read
from cyclerctl.store.journal import connect

HERE = Path(__file__).parent
PROTOCOL = HERE / "data" / "small_cycling.yaml"
REQUIRED = ("Test Time / s", "Voltage / V", "Current / A")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["run", str(PROTOCOL), "-i", "rc:a", "--out", str(out), "--no-metrics"]) == 0
    return out


def test_run_writes_everything(finished_run, capsys):
    info = json.loads((finished_run / "run.json").read_text())
    assert info["status"] == "complete" and info["channels"][0]["instrument"] == "rc:a"
    assert info["channels"][0]["protocol"]["sha256"]
    for name in ("ch1.bdf.parquet", "ch1.bdf.csv", "ch1.metadata.json", "metrics/cycle.parquet"):
        assert (finished_run / name).is_file(), name


def check_bdf(table_columns, t, i, cycles):
    """The BDF rules we promise: required preferred labels, time non-decreasing, cycles never renumbered."""
    assert all(c in table_columns for c in REQUIRED)
    assert np.all(np.diff(t) >= 0)
    assert np.all(np.diff(cycles) >= 0) and cycles[0] == 1
    assert np.isfinite(i).all()


def test_parquet_and_csv_read_back(finished_run):
    conn = connect(finished_run, readonly=True)
    journal = read.samples(conn, "ch1")
    conn.close()
    pt = pq.read_table(finished_run / "ch1.bdf.parquet")
    ct = pacsv.read_csv(finished_run / "ch1.bdf.csv")
    for table in (pt, ct):
        cols = table.column_names
        t = table.column("Test Time / s").to_numpy()
        check_bdf(cols, t, table.column("Current / A").to_numpy(), table.column("Cycle Count / 1").to_numpy())
        np.testing.assert_allclose(t, journal["test_time_second"], rtol=1e-12)
        np.testing.assert_allclose(table.column("Voltage / V").to_numpy(), journal["voltage_volt"], rtol=1e-12)
        assert table.num_rows == len(journal["seq"])
    assert pt.schema.field("Cycle Count / 1").type == "int64"
    md = json.loads((finished_run / "ch1.metadata.json").read_text())
    assert md["rows"] == pt.num_rows and md["bdf_ontology_version"]
    assert {c["label"] for c in md["columns"]} == set(pt.column_names)
    assert md["cell"]["name"] == "small-HC" and "positive current = charge" in md["sign_convention"]


def test_batterydf_validates(finished_run):
    bdf = pytest.importorskip("bdf")
    import pandas as pd

    for df in (pd.read_parquet(finished_run / "ch1.bdf.parquet"), pd.read_csv(finished_run / "ch1.bdf.csv")):
        rep = bdf.validate_df(df, raise_on_error=True)
        assert rep["ok"] and not rep["missing"] and rep["time_stats"]["monotonic"]


def test_export_command_machine_names(finished_run, capsys):
    assert main(["export", str(finished_run), "--format", "bdf-parquet", "--machine-names"]) == 0
    t = pq.read_table(finished_run / "ch1.bdf.parquet")
    assert t.column_names[:3] == ["test_time_second", "voltage_volt", "current_ampere"]
    assert "ch1.bdf.parquet" in capsys.readouterr().out
    assert main(["export", str(finished_run), "--format", "hdf5"]) == 2
    assert "unknown export format hdf5" in capsys.readouterr().err


def test_metric_tables(finished_run):
    t = pq.read_table(finished_run / "metrics" / "cycle.parquet").to_pydict()
    assert t["cycle_count"] == [1, 2, 3]
    assert all(abs(ce - 1.0) < 1e-6 for ce in t["coulombic_efficiency"][1:])  # the RC cell is lossless


def test_resume_of_a_finished_run_says_so(finished_run, capsys):
    assert main(["resume", str(finished_run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already ended (complete)" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv,message", [
    (["run", "nonexistent_protocol.yaml", "-i", "rc:a"], "nonexistent_protocol.yaml"),
    (["run", str(PROTOCOL), "-i", "nosuch:x"], "unknown instrument 'nosuch'"),
    (["run", str(PROTOCOL), "-i", "rc:a", "--speed", "fast"], "--speed must be 'max' or a number"),
    (["run", str(PROTOCOL), "-i", "rc:a", "--mqtt", "tcp://x"], "--mqtt must be off, embedded or a broker URL"),
    (["run"], "give a PROTOCOL"),
    (["resume", "/nonexistent/run"], "not a run directory"),
    (["export", "/nonexistent/run"], "no run journal"),
])
def test_user_mistakes_are_one_line(argv, message, capsys, tmp_path):
    code = main(argv + (["--out", str(tmp_path / "x")] if argv[0] == "run" and len(argv) > 1 else []))
    err = capsys.readouterr().err
    assert code != 0 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bench_file_runs_a_rack(tmp_path, capsys):
    bench = tmp_path / "rack.yaml"
    bench.write_text(f"""
node: rack-a
defaults: {{instrument: "rc:a", protocol: {PROTOCOL}}}
channels:
  - name: A1
  - name: A2
    mass: 2.0 mg
  - name: A3
    protocol: {PROTOCOL}
""")
    out = tmp_path / "rack"
    assert main(["run", "--bench", str(bench), "--out", str(out), "--no-metrics"]) == 0
    conn = connect(out, readonly=True)
    try:
        chans = read.channels(conn)
        assert list(chans) == ["A1", "A2", "A3"]
        assert chans["A2"]["cell"]["active_mass"] == pytest.approx(2e-6)
        for ch in chans:
            s = read.samples(conn, ch)
            assert np.array_equal(s["seq"], np.arange(len(s["seq"])))
    finally:
        conn.close()
    info = json.loads((out / "run.json").read_text())
    assert info["settings"]["node"] == "rack-a" and info["status"] == "complete"
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels:\n  - name: A1\n    protocol: x\n    colour: red\n")
    assert main(["run", "--bench", str(bad)]) == 2
    assert "unknown key(s) colour" in capsys.readouterr().err
