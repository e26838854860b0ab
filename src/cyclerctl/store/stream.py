"""BDF exports written while a run goes: the sample rows of every commit, as the journal writer hands
them over (Journal.feeds, after COMMIT returned), are appended to each channel's Parquet and CSV file
in a writer thread of their own, so the end of a run only closes the files instead of reading the
whole journal back.

The files are the same bytes as `export_run` writes from the journal: the same columns, the same
20,000-row Parquet row groups, the same values (the journal's NULL for NaN, 0.0 for -0.0). Until the
run ends they are ``CH.bdf.parquet.partial`` and ``CH.bdf.csv.partial``; `finish()` closes, fsyncs and
renames them and writes the sidecars and metric tables. Fallback to `export_channel` (reading the
journal) for a channel whose columns could not be fixed in advance (a column that first holds a
value after the first row group was written, e.g. an EIS step late in a run), one without samples,
one whose streamed file failed to write, and, while too many rows wait for their row groups across
all channels (`max_buffered`), the channel holding the most. After a crash the partial files are worthless (they may
miss the last commits or hold rows beyond the journal): a resumed run deletes them and first copies
the committed rows from the journal into fresh ones (`prime`), in the writer thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import export, read, schema
from .export import (
    EXPORT_ORDER,
    _fsync_replace,
    _table,
    export_channel,
    export_metrics,
    metadata,
    write_sidecar,
)
from .journal import connect, read_meta

log = logging.getLogger(__name__)

PARTIAL = ".partial"
ALWAYS = ("test_time_second", "voltage_volt", "current_ampere", "cycle_count", "step_count", "step_id",
          "record_index")
_INDEX = {c: k for k, c in enumerate(schema.SAMPLE_COLUMNS)}
# export column -> column of the sample rows (record_index is the seq)
_SOURCE = {c: _INDEX["seq" if c == "record_index" else c] for c in EXPORT_ORDER}


def partial_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob(f"*.bdf.*{PARTIAL}"))


@dataclass
class _Channel:
    ch: str
    names: list[str] | None = None  # fixed when the first row group is written
    seen: np.ndarray = field(default_factory=lambda: np.zeros(len(schema.SAMPLE_COLUMNS), dtype=bool))
    buffer: list[np.ndarray] = field(default_factory=list)
    buffered: int = 0
    rows: int = 0  # rows written to the files
    writers: dict[str, tuple] = field(default_factory=dict)  # key -> (writer, partial path, final path)
    fallback: str = ""  # why this channel is exported from the journal at the end


class ExportStream:
    """Streams the BDF files of a run's channels; `push` is a Journal feed (any thread)."""

    def __init__(self, run_dir: str | Path, channels: Iterable[str], formats: tuple[str, ...],
                 labels: bool = True, max_queued: int = 4, max_buffered: int = 1_000_000) -> None:
        self.run_dir = Path(run_dir)
        self.formats = tuple(formats)
        self.labels = labels
        self.channels = {ch: _Channel(ch) for ch in channels}
        # rows held for row groups not yet full, all channels (~112 B each): a rack of many slow
        # channels would otherwise hold a row group per channel; beyond it the channel holding the
        # most is exported from the journal at the end instead
        self.max_buffered = int(max_buffered)
        self._buffered = 0
        self._queue: queue.Queue = queue.Queue(max_queued)  # bounded: a slow disk holds the committer back
        self._thread = threading.Thread(target=self._work, name="export-stream", daemon=True)
        self._closed = False
        self._thread.start()

    # ---- feeding (the journal writer's thread) -------------------------------------------------
    def push(self, ch: str, rows: np.ndarray) -> None:
        """Committed rows of `ch` (columns schema.SAMPLE_COLUMNS, consecutive seq)."""
        if ch in self.channels and not self._closed:
            self._queue.put((ch, rows))

    def prime(self, ch: str, to_seq: int) -> None:
        """Before the first push of a resumed channel: its committed rows seq < to_seq, read from the
        journal by the writer thread."""
        self._queue.put((ch, ("prime", to_seq)))

    # ---- the writer thread -------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            ch, rows = item
            c = self.channels[ch]
            if c.fallback:
                continue
            try:
                if isinstance(rows, tuple):
                    self._prime(c, rows[1])
                else:
                    self._add(c, rows)
            except Exception as exc:  # noqa: BLE001 - the journal has the rows: export from it at the end
                log.warning("export of %s while running failed (%s); it is exported from the journal at the end",
                            ch, exc)
                self._give_up(c, f"write failed: {exc}")

    def _prime(self, c: _Channel, to_seq: int) -> None:
        conn = connect(self.run_dir, readonly=True)
        try:
            for cols in read.iter_samples(conn, c.ch, to_seq=to_seq, chunk=export.CHUNK):
                self._add(c, np.column_stack([cols[n] for n in schema.SAMPLE_COLUMNS]))
        finally:
            conn.close()

    def _add(self, c: _Channel, rows: np.ndarray) -> None:
        if not len(rows):
            return
        used = ~np.isnan(rows).all(axis=0)
        if c.names is not None and (used & ~c.seen).any():
            missing = [n for n, u in zip(schema.SAMPLE_COLUMNS, used & ~c.seen, strict=True) if u]
            self._give_up(c, f"column {', '.join(missing)} first holds a value after the first row group")
            return
        c.seen |= used
        c.buffer.append(rows)
        c.buffered += len(rows)
        self._buffered += len(rows)
        chunk = export.CHUNK  # rows per row group, as export_channel writes them
        while c.buffered >= chunk:
            self._write(c, self._take(c, chunk))
        if self._buffered > self.max_buffered:
            most = max(self.channels.values(), key=lambda k: k.buffered)
            self._give_up(most, f"more than {self.max_buffered:,} rows held for all channels' row groups")

    def _take(self, c: _Channel, n: int) -> np.ndarray:
        """The first n buffered rows (only those are copied: memory stays at one row group)."""
        parts, got = [], 0
        while got < n:
            a = c.buffer[0]
            need = n - got
            if len(a) <= need:
                parts.append(c.buffer.pop(0))
            else:
                parts.append(a[:need])
                c.buffer[0] = a[need:]
            got += len(parts[-1])
        c.buffered -= n
        self._buffered -= n
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _write(self, c: _Channel, rows: np.ndarray) -> None:
        if c.names is None:
            c.names = [n for n in EXPORT_ORDER if n in ALWAYS or c.seen[_SOURCE[n]]]
        t = _table({n: rows[:, k] for n, k in _INDEX.items()}, c.names, self.labels)
        if not c.writers:
            stem = self.run_dir / c.ch
            if "bdf-parquet" in self.formats:
                final = stem.with_name(f"{c.ch}.bdf.parquet")
                part = final.with_name(final.name + PARTIAL)
                c.writers["pq"] = (pq.ParquetWriter(part, t.schema, compression="zstd"), part, final)
            if "bdf-csv" in self.formats:
                final = stem.with_name(f"{c.ch}.bdf.csv")
                part = final.with_name(final.name + PARTIAL)
                c.writers["csv"] = (pacsv.CSVWriter(part, t.schema), part, final)
        for w, _, _ in c.writers.values():
            w.write_table(t)
        c.rows += t.num_rows

    def _give_up(self, c: _Channel, why: str) -> None:
        c.fallback = why
        self._buffered -= c.buffered
        c.buffer, c.buffered = [], 0
        self._discard(c)

    @staticmethod
    def _discard(c: _Channel) -> None:
        for w, part, _ in c.writers.values():
            try:
                w.close()
            except Exception:  # noqa: BLE001 - the file is deleted anyway
                pass
            part.unlink(missing_ok=True)
        c.writers = {}

    def _stop_thread(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    # ---- the end of the run ------------------------------------------------------------------------
    def finish(self) -> list[Path]:
        """After the last commit: the remaining rows, close + fsync + rename, sidecars, metric tables.
        Returns the files written, in export_run's order."""
        self._stop_thread()
        out: list[Path] = []
        conn = connect(self.run_dir, readonly=True)
        try:
            meta = read_meta(conn)
            descriptors = read.channels(conn)
            for ch, desc in descriptors.items():
                c = self.channels.get(ch)
                if c is not None and not c.fallback and c.buffered:
                    try:
                        self._write(c, self._take(c, c.buffered))
                    except Exception as exc:  # noqa: BLE001
                        self._give_up(c, f"write failed: {exc}")
                if c is None or c.fallback or c.rows == 0:
                    if c is not None:
                        self._discard(c)
                        if c.fallback:
                            log.info("export of %s from the journal: %s", ch, c.fallback)
                    out += export_channel(conn, self.run_dir, ch, desc, meta, self.formats, self.labels)
                    continue
                for w, part, final in c.writers.values():
                    w.close()
                    _fsync_replace(part, final)
                    out.append(final)
                c.writers = {}
                md = metadata(ch, desc, meta, c.names or [], c.rows, self.labels)
                out.append(write_sidecar(self.run_dir / f"{ch}.metadata.json", md))
            out += export_metrics(conn, self.run_dir)
        finally:
            conn.close()
        return out

    def abandon(self) -> None:
        """The run did not end cleanly: stop and delete the partial files (a resume writes them anew)."""
        self._stop_thread()
        for c in self.channels.values():
            self._discard(c)
