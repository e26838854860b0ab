"""Exports of a run journal: BDF time series per channel (Parquet, CSV) with a metadata sidecar, and
metric tables (RUN_DIR/metrics/KIND.parquet). docs/data-format.md is the description of the files.

Files are written to a temporary name, fsynced and renamed, so a crash during export never leaves a
half-written file under the final name; the journal stays the source of truth. Samples are streamed
in chunks, so memory does not grow with the length of the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .. import __version__
from ..errors import ConfigError
from . import read, schema
from .journal import connect, read_meta

FORMATS = ("bdf-parquet", "bdf-csv")
BDF_ONTOLOGY = "1.3.0"

# journal column -> BDF preferred label (the header of the exported files)
PREFERRED_LABELS: dict[str, str] = {
    "test_time_second": "Test Time / s",
    "voltage_volt": "Voltage / V",
    "current_ampere": "Current / A",
    "unix_time_second": "Unix Time / s",
    "cycle_count": "Cycle Count / 1",
    "step_count": "Step Count / 1",
    "step_id": "Step ID / 1",
    "step_time_second": "Step Time / s",
    "record_index": "Record Index / 1",
    "temperature_t1_celsius": "Surface Temperature T1 / degC",
    "frequency_hertz": "Frequency / Hz",
    "real_impedance_ohm": "Real Impedance / ohm",
    "imaginary_impedance_ohm": "Imaginary Impedance / ohm",
    "sweep_segment": "Sweep Segment / 1",
}
# order of the exported columns; columns that are entirely empty in a run are left out
EXPORT_ORDER = ("test_time_second", "voltage_volt", "current_ampere", "unix_time_second", "cycle_count",
                "step_count", "step_id", "step_time_second", "record_index", "temperature_t1_celsius",
                "frequency_hertz", "real_impedance_ohm", "imaginary_impedance_ohm", "sweep_segment")
INTEGER_COLUMNS = frozenset({"cycle_count", "step_count", "step_id", "record_index", "sweep_segment"})
CHUNK = 20_000  # rows per Parquet row group (and per read of the journal)


def parse_formats(text: str | Iterable[str]) -> tuple[str, ...]:
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ConfigError(f"unknown export format {', '.join(bad) or '(none)'}; use {' or '.join(FORMATS)} "
                          f"(comma-separated for both)")
    return tuple(items)


def _present_columns(conn, ch: str) -> list[str]:
    """Export columns that hold at least one value for this channel (one pass over the table)."""
    always = ("test_time_second", "voltage_volt", "current_ampere", "cycle_count", "step_count", "step_id",
              "record_index")
    optional = [c for c in EXPORT_ORDER if c not in always]
    counts = conn.execute(f"SELECT {', '.join(f'COUNT({c})' for c in optional)} FROM samples WHERE ch=?",
                          (ch,)).fetchone()
    present = {c for c, n in zip(optional, counts, strict=True) if n}
    return [c for c in EXPORT_ORDER if c in always or c in present]


def _table(cols: dict[str, np.ndarray], names: list[str], labels: bool) -> pa.Table:
    arrays, fields = [], []
    for c in names:
        a = cols["seq"] if c == "record_index" else cols[c]
        null = np.isnan(a)  # NaN -> null
        if c in INTEGER_COLUMNS:
            arrays.append(_arrow(pa.int64(), np.where(null, 0, a).astype(np.int64), null))
        else:
            # a contiguous copy, with -0.0 as 0.0: the journal stores an integral REAL as an integer,
            # so rows read back from it never hold -0.0, and rows streamed from a commit must not either
            arrays.append(_arrow(pa.float64(), np.asarray(a, dtype=np.float64) + 0.0, null))
        fields.append(PREFERRED_LABELS[c] if labels else c)
    return pa.Table.from_arrays(arrays, names=fields)


def _arrow(typ: pa.DataType, values: np.ndarray, null: np.ndarray) -> pa.Array:
    """A contiguous numpy column as an Arrow array from its buffers (pa.array would import pandas
    to look for a Series first: ~0.3 s of CPU and tens of MB)."""
    n = int(null.sum())
    validity = pa.py_buffer(np.packbits(~null, bitorder="little")) if n else None
    return pa.Array.from_buffers(typ, len(values), [validity, pa.py_buffer(values)], null_count=n)


def _atomic(path: Path):
    tmp = path.with_name(path.name + ".tmp")
    return tmp


def _fsync_replace(tmp: Path, final: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)


def export_channel(conn, run_dir: Path, ch: str, descriptor: dict, meta: dict, formats: tuple[str, ...],
                   labels: bool = True) -> list[Path]:
    names = _present_columns(conn, ch)
    stem = run_dir / ch
    out: list[Path] = []
    writers: dict[str, tuple] = {}
    n_rows = 0
    # Arrow encodes and writes a chunk (without the GIL) in worker threads, one per file, while the
    # next chunk is read from the journal; one chunk in flight at most, so memory stays bounded.
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="export")
    pending: list[Future] = []

    try:
        wanted = tuple(c for c in schema.SAMPLE_COLUMNS if c == "seq" or c in names)
        for cols in read.iter_samples(conn, ch, chunk=CHUNK, columns=wanted):
            t = _table(cols, names, labels)
            n_rows += t.num_rows
            for f in pending:
                f.result()
            if "bdf-parquet" in formats and "pq" not in writers:
                final = stem.with_name(f"{ch}.bdf.parquet")
                tmp = _atomic(final)
                writers["pq"] = (pq.ParquetWriter(tmp, t.schema, compression="zstd"), tmp, final)
            if "bdf-csv" in formats and "csv" not in writers:
                final = stem.with_name(f"{ch}.bdf.csv")
                tmp = _atomic(final)
                writers["csv"] = (pacsv.CSVWriter(tmp, t.schema), tmp, final)
            pending = [pool.submit(w[0].write_table, t) for w in writers.values()]
        for f in pending:
            f.result()
        if not writers and n_rows == 0:  # a channel without samples: still write empty files
            empty = _table(read.columns_from_rows([], schema.SAMPLE_COLUMNS), names, labels)
            if "bdf-parquet" in formats:
                final = stem.with_name(f"{ch}.bdf.parquet")
                writers["pq"] = (pq.ParquetWriter(_atomic(final), empty.schema), _atomic(final), final)
            if "bdf-csv" in formats:
                final = stem.with_name(f"{ch}.bdf.csv")
                writers["csv"] = (pacsv.CSVWriter(_atomic(final), empty.schema), _atomic(final), final)
                writers["csv"][0].write_table(empty)
    finally:
        pool.shutdown(wait=True)
        for w, tmp, final in writers.values():
            w.close()
            _fsync_replace(tmp, final)
            out.append(final)
    md = metadata(ch, descriptor, meta, names, n_rows, labels)
    out.append(write_sidecar(stem.with_name(f"{ch}.metadata.json"), md))
    return out


def write_sidecar(path: Path, md: dict) -> Path:
    tmp = _atomic(path)
    tmp.write_text(json.dumps(md, indent=2))
    _fsync_replace(tmp, path)
    return path


def metadata(ch: str, descriptor: dict, meta: dict, names: list[str], n_rows: int, labels: bool) -> dict:
    """The sidecar: what the file is (BDF version, columns and units), the cell, protocol, equipment."""
    run_json = json.loads(meta.get("run_json", "{}"))
    return {
        "format": "Battery Data Format",
        "bdf_ontology_version": BDF_ONTOLOGY,
        "schema": "cyclerctl-bdf/1",
        "run_id": meta.get("run_id"),
        "channel": ch,
        "rows": n_rows,
        "columns": [{"label": PREFERRED_LABELS[c], "machine_name": c,
                     "unit": PREFERRED_LABELS[c].split(" / ")[1]} for c in names],
        "column_names": "preferred_labels" if labels else "machine_names",
        "sign_convention": "positive current = charge; sodiation of an anode half cell = discharge (negative)",
        "cell": descriptor.get("cell"),
        "protocol": descriptor.get("protocol"),
        "equipment": {"instrument": descriptor.get("instrument"), "model": descriptor.get("model"),
                      "preset": descriptor.get("preset")},
        "software": {"name": "cyclerctl", "version": __version__,
                     "journal_software_version": meta.get("software_version")},
        "created": run_json.get("created"),
    }


def export_metrics(conn, run_dir: Path) -> list[Path]:
    """One Parquet table per metric kind, all channels: ch, seq, kind, test_time_second, cycle_count and
    the data keys (units in the key names)."""
    kinds = [k for (k,) in conn.execute("SELECT DISTINCT kind FROM metrics ORDER BY kind")]
    out = []
    if not kinds:
        return out
    mdir = run_dir / "metrics"
    mdir.mkdir(exist_ok=True)
    for kind in kinds:
        cur = conn.execute("SELECT ch, seq, test_time_second, cycle_count, data FROM metrics WHERE kind=? "
                           "ORDER BY ch, seq", (kind,))
        parts: list[pa.Table] = []
        while True:  # Python objects only for one batch at a time; the batches are kept as Arrow
            rows = cur.fetchmany(METRIC_BATCH)
            if not rows:
                break
            parts.append(_metric_batch(rows))
        try:
            table = pa.concat_tables(parts, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            table = pa.concat_tables([_as_text(t) for t in parts], promote_options="permissive")
        final = mdir / f"{kind}.parquet"
        tmp = _atomic(final)
        pq.write_table(table, tmp)
        _fsync_replace(tmp, final)
        out.append(final)
    return out


METRIC_BATCH = 2000


def _metric_batch(rows: list[tuple]) -> pa.Table:
    columns: dict[str, list] = {"ch": [], "seq": [], "test_time_second": [], "cycle_count": []}
    n = 0
    for ch, seq, t, cyc, data in rows:
        for k, v in (("ch", ch), ("seq", seq), ("test_time_second", t), ("cycle_count", cyc)):
            columns[k].append(v)
        for k, v in orjson.loads(data).items():
            if k in ("ch", "seq", "test_time_second", "cycle_count"):
                continue
            col = columns.get(k)
            if col is None:
                col = columns[k] = [None] * n
            col.append(v)
        n += 1
        for col in columns.values():
            if len(col) < n:
                col.append(None)
    return pa.table({k: _arrow_column(v) for k, v in columns.items()})


def _as_text(t: pa.Table) -> pa.Table:
    """Nested columns as JSON text (when batches disagree on a nested type)."""
    cols = {}
    for name in t.column_names:
        col = t.column(name)
        if pa.types.is_nested(col.type):
            cols[name] = pa.array([None if v is None else json.dumps(v) for v in col.to_pylist()], type=pa.string())
        else:
            cols[name] = col
    return pa.table(cols)


def _arrow_column(values: list) -> pa.Array:
    """Native Arrow types where the values agree (numbers, strings, lists of numbers, structs);
    JSON text for a column whose values do not."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())


def export_run(run_dir: str | Path, formats: Iterable[str] = FORMATS, labels: bool = True) -> list[Path]:
    """Export every channel of a run and its metric tables. Returns the files written."""
    run_dir = Path(run_dir)
    formats = parse_formats(list(formats))
    conn = connect(run_dir, readonly=True)
    try:
        meta = read_meta(conn)
        out: list[Path] = []
        for ch, desc in read.channels(conn).items():
            out += export_channel(conn, run_dir, ch, desc, meta, formats, labels)
        out += export_metrics(conn, run_dir)
    finally:
        conn.close()
    return out
