"""Live equals offline on a real engine run: the metric rows the engine's operators wrote into the
journal while the simulated cell ran (GCD cycles, CV at two rates, GITT, ICI, EIS, then GITT and EIS
at a second temperature: Arrhenius rows from both) equal those of
`cyclerctl analyze` replaying the same journal, whatever the instrument's block size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cyclerctl.analysis.offline import analyze_journal
from cyclerctl.engine.session import ChannelPlan, RunSettings, Session
from cyclerctl.protocol import compile_file
from cyclerctl.store.journal import connect

PROTOCOL = Path(__file__).parent / "data" / "analysis_mix.yaml"
KINDS = ("cycle", "rate", "dqdv", "gitt", "ici", "cv", "eis", "arrhenius")
# differences of near-equal values, where a block split changes only the rounding: absolute tolerances
NEAR_ZERO = {"voltage_hysteresis_volt": 1e-14, "cumulative_irreversible_capacity_ah": 1e-18}


def same(a, b, path):
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{k}]")
    elif isinstance(a, float) or isinstance(b, float):
        key = path.rsplit(".", 1)[-1].split("[", 1)[0]
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=NEAR_ZERO.get(key, 0.0)), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("block", [1, 7, 50, 100_000])
async def test_live_metrics_equal_the_offline_replay(tmp_path, block):
    run_dir = tmp_path / "run"
    plan = ChannelPlan("ch1", compile_file(PROTOCOL), "sim:hard_carbon", {"max_block_samples": block})
    assert await Session.create([plan], RunSettings(export=(), analysis=True), run_dir).execute() == {"ch1": "done"}
    conn = connect(run_dir, readonly=True)
    stored = conn.execute("SELECT kind, data FROM metrics WHERE ch='ch1' ORDER BY seq").fetchall()
    conn.close()
    offline = analyze_journal(run_dir)
    for kind in KINDS:
        assert offline[kind], f"the run gave no {kind} rows"
    assert {r.data["source"] for r in offline["arrhenius"]} == {"eis", "gitt"}
    live = {k: [json.loads(data) for kind, data in stored if kind == k] for k in offline}
    for kind, rows in offline.items():
        assert len(live[kind]) == len(rows), kind
        for n, (a, b) in enumerate(zip(live[kind], rows, strict=True)):
            same(a, b.data, f"{kind}[{n}]")
