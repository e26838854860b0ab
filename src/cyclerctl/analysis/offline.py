"""Offline analysis: replay a run journal through fresh operators (identical rows to the live run),
and write the metric tables RUN_DIR/metrics/<kind>.parquet."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, JournalError
from ..program import Cell, Program
from .base import KINDS, MetricRow
from .live import AnalysisOptions, default_operators, operators_for


def _open(journal_path: str | Path) -> sqlite3.Connection:
    p = Path(journal_path)
    if p.is_dir():
        p = p / "journal.sqlite"
    if not p.is_file():
        raise ConfigError(f"no run journal at {p} (give a run directory or its journal.sqlite)")
    try:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        conn.execute("SELECT count(*) FROM channels").fetchone()
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{p} is not a readable cyclerctl journal ({exc})") from None
    return conn


def _cell_from_descriptor(desc: dict) -> Cell:
    cell = desc.get("cell") or {}
    fields = {f.name for f in dataclasses.fields(Cell)}
    return Cell(**{k: v for k, v in cell.items() if k in fields})


def _operators(conn: sqlite3.Connection, ch: str, descriptor: dict, options: AnalysisOptions | None) -> list:
    try:
        row = conn.execute("SELECT program FROM programs WHERE ch=?", (ch,)).fetchone()
    except sqlite3.OperationalError:
        row = None
    if row is not None:
        try:
            program = pickle.loads(row[0])
            if isinstance(program, Program):
                return default_operators(program, options)
        except Exception:  # an unreadable program blob falls back to the descriptor's cell
            pass
    return operators_for(_cell_from_descriptor(descriptor), descriptor.get("cycle_starts_on", "discharge"), options)


def run_stream(operators: list, stream: Iterable[tuple[str, object]]) -> dict[str, list[MetricRow]]:
    """Feed ("samples", columns) / ("event", Event) items through the operators, in order."""
    out: dict[str, list[MetricRow]] = {k: [] for k in KINDS}
    for kind, item in stream:
        for op in operators:
            rows = op.feed_samples(item) if kind == "samples" else op.feed_event(item)
            for r in rows:
                out.setdefault(r.kind, []).append(r)
    return out


def analyze_journal(journal_path: str | Path, channel: str | None = None,
                    options: AnalysisOptions | None = None) -> dict[str, list[MetricRow]]:
    """Replay one channel of a journal (default: the first) through fresh operators."""
    return analyze_journal_channels(journal_path, options, only=channel)[channel or "__first__"]


def analyze_journal_channels(journal_path: str | Path, options: AnalysisOptions | None = None,
                             only: str | None = None) -> dict[str, dict[str, list[MetricRow]]]:
    """ch -> kind -> rows for every channel of the journal (or only `only`)."""
    from ..store import read

    conn = _open(journal_path)
    try:
        chans = read.channels(conn)
        if not chans:
            raise ConfigError(f"journal {journal_path} has no channels (the run never started)")
        if only is not None and only not in chans:
            raise ConfigError(f"journal has no channel {only!r} (channels: {', '.join(chans)})")
        out: dict[str, dict[str, list[MetricRow]]] = {}
        for ch, desc in chans.items():
            if only is not None and ch != only:
                continue
            ops = _operators(conn, ch, desc, options)
            out[ch] = run_stream(ops, read.replay(conn, ch))
        if only is None:
            out["__first__"] = out[next(iter(chans))]
        else:
            out["__first__"] = out[only]
        return out
    finally:
        conn.close()


def _flat(row: MetricRow, ch: str) -> dict:
    rec: dict = {"ch": ch}
    for k, v in row.data.items():
        rec[k] = json.dumps(v) if isinstance(v, (list, dict)) else v
    return rec


def write_metric_tables(out_dir: str | Path, results: dict[str, dict[str, list[MetricRow]]]) -> list[Path]:
    """One Parquet table per kind (rows of all channels, column `ch`); list and dict values are
    stored as JSON text. Each file is written to a temporary name and renamed into place."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        recs = [_flat(r, ch) for ch, kinds in results.items() if ch != "__first__" for r in kinds.get(kind, [])]
        path = out_dir / f"{kind}.parquet"
        if not recs:
            if path.exists():
                path.unlink()
            continue
        keys: dict[str, None] = {}
        for r in recs:
            keys.update(dict.fromkeys(r))
        cols = {}
        for k in keys:
            vals = [r.get(k) for r in recs]
            types = {type(v) for v in vals if v is not None}
            if types <= {int} and types:
                cols[k] = pa.array(vals, pa.int64())
            elif types <= {int, float} and types:
                cols[k] = pa.array([None if v is None else float(v) for v in vals], pa.float64())
            elif types <= {bool} and types:
                cols[k] = pa.array(vals, pa.bool_())
            else:
                cols[k] = pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in vals],
                                   pa.string())
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.table(cols), tmp)
        os.replace(tmp, path)
        written.append(path)
    return written


def read_metric_table(path: str | Path) -> list[dict]:
    """A metric table back as dicts (JSON text columns decoded)."""
    rows = pq.read_table(path).to_pylist()
    for r in rows:
        for k, v in r.items():
            if isinstance(v, str) and v[:1] in "[{":
                try:
                    r[k] = json.loads(v)
                except ValueError:
                    pass
    return rows
