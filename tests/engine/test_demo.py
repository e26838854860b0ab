"""`cyclerctl demo` end to end (MQTT off): the shipped demo protocol on the simulated hard-carbon
cell at max speed, with live metric lines, the summary, the exports and the report."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from cyclerctl.cli import main


@pytest.mark.slow
def test_demo_runs_to_the_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--mqtt", "off", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete"
    assert "ch1  cycle 1, discharge" in text and "CE" in text  # live metric lines
    assert "EIS fit" in text and "GITT pulse" in text
    assert "run complete" in text and "metrics: cycle" in text  # the summary
    cycles = pq.read_table(out / "metrics" / "cycle.parquet").to_pydict()
    assert len(cycles["cycle_count"]) >= 15
    assert 0.5 < cycles["coulombic_efficiency"][0] < 0.95  # first-cycle SEI loss of hard carbon
    for kind in ("gitt", "eis", "rate"):
        assert (out / "metrics" / f"{kind}.parquet").is_file()
    t = pq.read_table(out / "ch1.bdf.parquet")
    assert t.num_rows > 10_000 and "Frequency / Hz" in t.column_names
    assert "report:" in text
    if "report: not available" not in text:
        assert any((out / "report").glob("*.png"))
