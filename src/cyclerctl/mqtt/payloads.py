"""Payloads: self-describing JSON (``v``, ``run``, ``ch``, ``seq``), BDF column names, no NaN.

A data batch is columnar and covers samples ``seq … seq+n-1`` of one channel, all from one step
(step and cycle identifiers are scalars of the batch). A column that is null throughout a batch is
left out of ``cols``; ``desc`` lists every column a channel can have.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import orjson

from ..store import schema

VERSION = 1
MAX_BATCH_SAMPLES = 200
MAX_BATCH_BYTES = 64_000
STEP_KEYS = ("step_count", "step_id", "cycle_count")

UNITS = {  # BDF units of the journal's sample columns
    "test_time_second": "s", "unix_time_second": "s", "step_time_second": "s",
    "voltage_volt": "V", "current_ampere": "A", "temperature_t1_celsius": "degC",
    "cycle_count": "1", "step_count": "1", "step_id": "1",
    "frequency_hertz": "Hz", "real_impedance_ohm": "ohm", "imaginary_impedance_ohm": "ohm",
    "sweep_segment": "1",
}


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return _clean(obj.tolist())
    return obj


def dumps(obj: Any) -> bytes:
    """Compact JSON; NaN and ±inf become null (JSON has no NaN). Floats are written in their
    shortest round-trip form (orjson: the data batches' encoding was most of the publisher's CPU)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # what orjson does not take (e.g. non-string keys): the standard library
        return json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False).encode()


def loads(payload: bytes | str) -> Any:
    return json.loads(payload)


def split_batches(rows: Sequence[tuple], step_index: Sequence[int],
                  max_samples: int = MAX_BATCH_SAMPLES) -> Iterator[tuple[int, int]]:
    """(start, stop) index ranges over `rows` (ordered by seq): at most `max_samples` each, and a new
    batch whenever any of the columns at `step_index` (step_count, step_id, cycle_count) changes."""
    start, n = 0, len(rows)
    while start < n:
        key = tuple(rows[start][i] for i in step_index)
        stop = start + 1
        limit = min(n, start + max_samples)
        while stop < limit and tuple(rows[stop][i] for i in step_index) == key:
            stop += 1
        yield start, stop
        start = stop


def data_batch(run: str, ch: str, sess: int, columns: Sequence[str], rows: Sequence[tuple],
               replay: bool = False) -> dict:
    """One columnar batch from journal rows (columns[0:2] are ch, seq; all rows from one step)."""
    cols: dict[str, list] = {}
    first = rows[0]
    scalars: dict[str, Any] = {}
    for i, name in enumerate(columns[2:], start=2):
        if name in STEP_KEYS:
            scalars[name] = first[i]
            continue
        values = [r[i] for r in rows]
        if any(v is not None for v in values):
            cols[name] = values
    payload = {"v": VERSION, "enc": "json", "run": run, "ch": ch, "sess": sess,
               "seq": first[1], "n": len(rows), **scalars, "cols": cols}
    if replay:
        payload["replay"] = True
    return payload


def encode_batches(run: str, ch: str, sess: int, columns: Sequence[str], rows: Sequence[tuple],
                   replay: bool = False,
                   max_samples: int = MAX_BATCH_SAMPLES) -> Iterator[tuple[int, int, bytes]]:
    """(first seq, last seq, payload) for every batch of `rows`, split at steps, ≤ max_samples and
    ≤ 64 kB each."""
    step_index = [columns.index(k) for k in STEP_KEYS if k in columns]
    for a, b in split_batches(rows, step_index, max_samples):
        chunk = rows[a:b]
        body = dumps(data_batch(run, ch, sess, columns, chunk, replay))
        if len(body) > MAX_BATCH_BYTES and len(chunk) > 1:
            yield from encode_batches(run, ch, sess, columns, chunk, replay, max(1, len(chunk) // 2))
            continue
        yield chunk[0][1], chunk[-1][1], body


def array_row(columns: Sequence[str], row: np.ndarray, ch: str) -> tuple:
    """A row of an array batch (schema.SAMPLE_COLUMNS order) as the journal returns it, in the order
    of `columns` (those of the samples table: ch, seq, ...)."""
    index = {c: k for k, c in enumerate(schema.SAMPLE_COLUMNS)}
    out: list[Any] = []
    for name in columns:
        if name == "ch":
            out.append(ch)
            continue
        k = index.get(name)
        v = None if k is None else float(row[k])
        if v is not None and math.isnan(v):
            v = None
        elif v is not None and name in schema.INTEGER_SAMPLE_COLUMNS:
            v = int(v)
        elif v is not None:
            v += 0.0
        out.append(v)
    return tuple(out)


def encode_array_batches(run: str, ch: str, sess: int, columns: Sequence[str], rows: np.ndarray,
                         replay: bool = False,
                         max_samples: int = MAX_BATCH_SAMPLES) -> Iterator[tuple[int, int, bytes]]:
    """encode_batches for committed rows held as a 2-D float64 array (columns schema.SAMPLE_COLUMNS,
    NaN = NULL, as the engine journals them): the same batches and the same payloads, without
    reading the rows back from the journal. Values are those the journal returns: None for NULL,
    int in INTEGER columns, 0.0 for -0.0 (SQLite stores an integral REAL as an integer)."""
    n = len(rows)
    if n == 0:
        return
    index = {c: k for k, c in enumerate(schema.SAMPLE_COLUMNS)}
    present = ["seq"] + [name for name in columns[2:] if name in index]
    keys = [index[k] for k in STEP_KEYS if k in present]
    if keys:
        k = rows[:, keys]
        change = np.flatnonzero(np.any(k[1:] != k[:-1], axis=1)) + 1
    else:
        change = np.empty(0, dtype=np.int64)
    bounds = np.r_[0, change, n].tolist()
    starts = [a for a0, b0 in zip(bounds[:-1], bounds[1:], strict=True) for a in range(a0, b0, max_samples)]
    stops = starts[1:] + [n]
    # per column: its values as Python objects once for the whole block, and per batch whether any
    # value is NULL (a column NULL throughout a batch is left out)
    values: dict[str, list] = {}
    nulls: dict[str, np.ndarray | None] = {}
    for name in present:
        a = rows[:, index[name]]
        null = np.isnan(a)
        if name in schema.INTEGER_SAMPLE_COLUMNS:
            v = np.where(null, 0, a).astype(np.int64).tolist()
        else:
            v = (a + 0.0).tolist()
        if null.any():
            for j in np.flatnonzero(null).tolist():
                v[j] = None
            nulls[name] = np.add.reduceat(null, starts)
        else:
            nulls[name] = None
        values[name] = v
    seq = values["seq"]
    lengths = [b - a for a, b in zip(starts, stops, strict=True)]
    for m, (a, b) in enumerate(zip(starts, stops, strict=True)):
        scalars: dict[str, Any] = {}
        cols: dict[str, list] = {}
        for name in present:
            if name == "seq":
                continue
            v = values[name]
            if name in STEP_KEYS:
                scalars[name] = v[a] if nulls[name] is None or v[a] is not None else None
                continue
            nn = nulls[name]
            if nn is not None and nn[m] == lengths[m]:
                continue
            cols[name] = v[a:b]
        yield from _array_payload(run, ch, sess, seq[a], b - a, scalars, cols, replay)


def _array_payload(run: str, ch: str, sess: int, first: int, n: int, scalars: dict, cols: dict[str, list],
                   replay: bool) -> Iterator[tuple[int, int, bytes]]:
    payload = {"v": VERSION, "enc": "json", "run": run, "ch": ch, "sess": sess,
               "seq": first, "n": n, **scalars, "cols": cols}
    if replay:
        payload["replay"] = True
    body = dumps(payload)
    if len(body) > MAX_BATCH_BYTES and n > 1:  # as encode_batches: halves, each checked again
        half = max(1, n // 2)
        for a in range(0, n, half):
            part = {k: v[a:a + half] for k, v in cols.items() if any(x is not None for x in v[a:a + half])}
            yield from _array_payload(run, ch, sess, first + a, min(half, n - a), scalars, part, replay)
        return
    yield first, first + n - 1, body


def _json_field(text: str | None) -> Any:
    if text is None:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return {"raw": text}


def event_payload(run: str, ch: str, row: dict, replay: bool = False) -> dict:
    """An events-table row as published on ``ch/{ch}/event``."""
    out = {"v": VERSION, "run": run, "ch": ch, "seq": row["seq"], "kind": row["kind"],
           "test_time_second": row.get("test_time_second"), "unix_time_second": row.get("unix_time_second"),
           "cycle_count": row.get("cycle_count"), "step_count": row.get("step_count"),
           "sample_seq": row.get("sample_seq"), "data": _json_field(row.get("data"))}
    if replay:
        out["replay"] = True
    return out


def metric_payload(run: str, ch: str, row: dict, replay: bool = False) -> dict:
    """A metrics-table row as published on ``ch/{ch}/metric/{kind}``."""
    out = {"v": VERSION, "run": run, "ch": ch, "seq": row["seq"], "kind": row["kind"],
           "test_time_second": row.get("test_time_second"), "cycle_count": row.get("cycle_count"),
           "data": _json_field(row.get("data"))}
    if replay:
        out["replay"] = True
    return out


def state_payload(run: str, ch: str, state: str, columns: Sequence[str], last: tuple | None,
                  ts: float) -> dict:
    """Flat snapshot of a channel (Grafana/Home Assistant friendly): one level, numbers or null."""
    out: dict[str, Any] = {"v": VERSION, "run": run, "ch": ch, "state": state, "seq": None}
    keys = ("step_id", "step_count", "cycle_count", "test_time_second", "step_time_second",
            "voltage_volt", "current_ampere", "temperature_t1_celsius")
    for k in keys:
        out[k] = None
    if last is not None:
        out["seq"] = last[1]
        for i, name in enumerate(columns):
            if name in keys:
                out[name] = last[i]
    out["ts"] = ts
    return out


def descriptor_payload(run: str, ch: str, node: str, descriptor: str | None, columns: Sequence[str],
                       ts: float) -> dict:
    """Retained ``desc`` of a channel: the journal's descriptor plus the column table with units."""
    desc = _json_field(descriptor)
    return {"v": VERSION, "run": run, "ch": ch, "node": node, "seq_start": 0,
            "columns": {c: UNITS.get(c) for c in columns[2:]}, "descriptor": desc, "ts": ts}
