"""Small helpers for engine tests: run a session, read its journal back."""

from __future__ import annotations

import numpy as np

from cyclerctl.engine.session import ChannelPlan, RunSettings, Session
from cyclerctl.store import read
from cyclerctl.store.journal import connect


def settings(**kw):
    kw.setdefault("export", ())
    kw.setdefault("analysis", False)
    return RunSettings(**kw)


def session(run_dir, programs, instrument="rc:a", options=None, **kw):
    """A session of one channel per program (names ch1, ch2, ...)."""
    plans = [ChannelPlan(f"ch{k + 1}", p, instrument, dict(options or {})) for k, p in enumerate(programs)]
    factory = kw.pop("operator_factory", None)
    return Session.create(plans, settings(**kw), run_dir, operator_factory=factory)


def journal(run_dir, ch="ch1"):
    conn = connect(run_dir, readonly=True)
    try:
        return read.samples(conn, ch), read.events(conn, ch), read.audit(conn), read.metrics(conn, ch)
    finally:
        conn.close()


def kinds(events):
    return [e.kind for e in events]


def assert_contiguous(samples, events):
    seq = samples["seq"]
    assert np.array_equal(seq, np.arange(len(seq)))
    assert [e.seq for e in events] == list(range(len(events)))
    assert np.all(np.diff(samples["test_time_second"]) >= 0)
    sc = samples["step_count"]
    assert np.all(np.diff(sc) >= 0) and np.all(np.diff(sc) <= 1)
    cc = samples["cycle_count"]
    assert np.all(np.diff(cc) >= 0) and np.all(np.diff(cc) <= 1)
