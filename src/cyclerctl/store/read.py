"""Reading a run journal: channels, samples as numpy columns (in chunks), events, metrics, engine state.

Readers open the database read-only; in WAL mode they never block the writer and see only committed
transactions.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import schema
from .journal import iter_rows


def event_type():
    """The Event class the analysis operators take (events-table rows)."""
    from ..analysis.base import Event  # imported late: the journal itself does not need the analysis

    return Event


def channels(conn: sqlite3.Connection) -> dict[str, dict]:
    """ch -> descriptor, in insertion order of the channel names."""
    return {ch: json.loads(d) for ch, d in conn.execute("SELECT ch, descriptor FROM channels ORDER BY rowid")}


def columns_from_rows(rows: list[tuple], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Row tuples -> float64 columns (NULL -> NaN)."""
    if not rows:
        return {n: np.empty(0) for n in names}
    a = np.array(rows, dtype=np.float64)
    return {n: a[:, i] for i, n in enumerate(names)}


def iter_samples(conn: sqlite3.Connection, ch: str, *, from_seq: int = 0, to_seq: int | None = None,
                 chunk: int = 200_000, columns: tuple[str, ...] = schema.SAMPLE_COLUMNS,
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Sample columns of one channel in seq order, `chunk` rows at a time (`columns`: which ones;
    reading fewer is cheaper)."""
    cols = ", ".join(columns)
    sql = f"SELECT {cols} FROM samples WHERE ch=? AND seq>=?"
    params: list = [ch, from_seq]
    if to_seq is not None:
        sql += " AND seq<?"
        params.append(to_seq)
    sql += " ORDER BY seq"
    for rows in iter_rows(conn, sql, params, chunk):
        yield columns_from_rows(rows, columns)


def samples(conn: sqlite3.Connection, ch: str) -> dict[str, np.ndarray]:
    """All samples of a channel as columns (for tests and small runs)."""
    parts = list(iter_samples(conn, ch))
    if not parts:
        return columns_from_rows([], schema.SAMPLE_COLUMNS)
    return {n: np.concatenate([p[n] for p in parts]) for n in schema.SAMPLE_COLUMNS}


def events(conn: sqlite3.Connection, ch: str, kind: str | None = None) -> list:
    Event = event_type()
    sql = ("SELECT seq, kind, test_time_second, unix_time_second, cycle_count, step_count, sample_seq, data "
           "FROM events WHERE ch=?")
    params: list = [ch]
    if kind is not None:
        sql += " AND kind=?"
        params.append(kind)
    out = []
    for seq, k, t, u, cyc, sc, ss, data in conn.execute(sql + " ORDER BY seq", params):
        out.append(Event(kind=k, test_time_second=t, cycle_count=cyc, step_count=sc, sample_seq=ss,
                         data=json.loads(data), ch=ch, seq=seq, unix_time_second=u))
    return out


def metrics(conn: sqlite3.Connection, ch: str, kind: str | None = None) -> list[dict]:
    """Metric rows as dicts: seq, kind, test_time_second, cycle_count and the row's data keys."""
    sql = "SELECT seq, kind, test_time_second, cycle_count, data FROM metrics WHERE ch=?"
    params: list = [ch]
    if kind is not None:
        sql += " AND kind=?"
        params.append(kind)
    out = []
    for seq, k, t, cyc, data in conn.execute(sql + " ORDER BY seq", params):
        row = {"seq": seq, "kind": k, "test_time_second": t, "cycle_count": cyc}
        row.update(json.loads(data))
        out.append(row)
    return out


def engine_state(conn: sqlite3.Connection, ch: str) -> tuple[dict | None, bytes | None]:
    """(engine state dict, channel state blob) as last committed, or (None, None)."""
    row = conn.execute("SELECT engine, channel_state FROM engine_state WHERE ch=?", (ch,)).fetchone()
    if row is None or row[0] is None:
        return None, None
    return json.loads(row[0]), row[1]


def audit(conn: sqlite3.Connection, ch: str | None = None) -> list[dict]:
    sql = "SELECT id, unix_time_second, ch, action, actor, source, request_id, args, result FROM audit"
    params: list = []
    if ch is not None:
        sql += " WHERE ch=?"
        params.append(ch)
    keys = ("id", "unix_time_second", "ch", "action", "actor", "source", "request_id", "args", "result")
    return [dict(zip(keys, r, strict=True)) for r in conn.execute(sql + " ORDER BY id", params)]


def replay(conn: sqlite3.Connection, ch: str, *, to_seq: int | None = None, to_event: int | None = None,
           chunk: int = 100_000) -> Iterator[tuple[str, Any]]:
    """The channel's stream in journal order: ("samples", columns) and ("event", Event) items.

    An event with sample_seq = k comes after samples seq < k and before sample k, exactly the order
    in which the engine fed the live operators."""
    evs = events(conn, ch)
    if to_event is not None:
        evs = [e for e in evs if e.seq < to_event]
    i = 0
    for cols in iter_samples(conn, ch, to_seq=to_seq, chunk=chunk):
        seqs = cols["seq"]
        start = 0
        n = len(seqs)
        while start < n:
            # events that come before the next sample
            while i < len(evs) and (evs[i].sample_seq or 0) <= seqs[start]:
                yield "event", evs[i]
                i += 1
            # samples up to the next event's position
            if i < len(evs):
                stop = int(np.searchsorted(seqs, evs[i].sample_seq or 0, side="left"))
                stop = max(stop, start + 1) if stop <= start else stop
            else:
                stop = n
            yield "samples", {k: v[start:stop] for k, v in cols.items()}
            start = stop
    while i < len(evs):
        yield "event", evs[i]
        i += 1
