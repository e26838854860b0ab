"""Fixtures of the analysis tests: a run journal on disk, written the way the engine writes it."""

import dataclasses
import json
import pickle

import numpy as np
import pytest

from cyclerctl.analysis.live import default_operators
from cyclerctl.analysis.synthetic import mixed_stream
from cyclerctl.program import Cell, Limits, Program
from cyclerctl.store import schema
from cyclerctl.store.journal import Journal

CELL = Cell(active_mass=3.4e-6, nominal_specific_capacity=300 * 3600.0, particle_radius=3.5e-6)
PROGRAM = Program(name="analysis check", instructions=(), cell=CELL, safety=Limits(), retention_reference_cycle=2)


def write_journal(run_dir):
    """Journal the mixed stream like the engine: samples, events and the live operators' metrics,
    committed every few items. Returns the live metric rows."""
    run_dir.mkdir()
    j = Journal(run_dir / "journal.sqlite")
    j.add_channel("ch1", "run1", {"cell": dataclasses.asdict(CELL)}, pickle.dumps(PROGRAM),
                  lambda *_: ("running", "{}", None))
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



@pytest.fixture(scope="session")
def mixed_run(tmp_path_factory):
    """(run directory, live metric rows) of the mixed synthetic stream (GCD, GITT, CV, EIS)."""
    d = tmp_path_factory.mktemp("runs") / "run1"
    live = write_journal(d)
    return d, live
