"""The journal as an outbox: read committed rows by seq, remember what the broker acknowledged.

The publisher opens its own SQLite connections to the run's journal (WAL, so reading never blocks the
engine's writer) and writes only the ``outbox`` table, in tiny transactions from a worker thread. ``PRAGMA data_version``
tells cheaply whether another connection committed since the last look, so polling often costs
almost nothing.
"""

from __future__ import annotations

import bisect
import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import JournalError

STREAMS = ("samples", "events", "metrics")
_OUTBOX_DDL = ("CREATE TABLE IF NOT EXISTS outbox(ch TEXT NOT NULL, stream TEXT NOT NULL, "
               "through_seq INTEGER NOT NULL, PRIMARY KEY (ch, stream))")


@dataclass
class Watermark:
    """What the broker acknowledged of one (channel, stream): every seq ≤ `through` for sure, plus
    acknowledged ranges above it (acks arrive out of order when publishes overlap, and backlog and
    live data are sent side by side). The list stays short: ranges merge as gaps fill."""

    through: int = -1
    above: list[tuple[int, int]] = field(default_factory=list)  # sorted, disjoint, inclusive

    def ack(self, lo: int, hi: int) -> None:
        if hi <= self.through:
            return
        lo = max(lo, self.through + 1)
        i = bisect.bisect_left(self.above, (lo, hi))
        self.above.insert(i, (lo, hi))
        merged: list[tuple[int, int]] = []
        for a, b in self.above:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        while merged and merged[0][0] <= self.through + 1:
            self.through = max(self.through, merged.pop(0)[1])
        self.above = merged

    def missing(self, head: int) -> list[tuple[int, int]]:
        """Ranges up to `head` not yet acknowledged."""
        out, nxt = [], self.through + 1
        for a, b in self.above:
            if a > nxt:
                out.append((nxt, min(a - 1, head)))
            nxt = max(nxt, b + 1)
        if nxt <= head:
            out.append((nxt, head))
        return [(a, b) for a, b in out if a <= b]


class JournalSource:
    """Read-side of one run journal for the publisher."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=5.0,
                                      isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout=5000")
            self.sample_columns = [r[1] for r in self.db.execute("PRAGMA table_info(samples)")]
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from None
        if not self.sample_columns:
            raise JournalError(f"{self.path} is not a cyclerctl journal (no samples table)")
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name='outbox'").fetchone() is None:
            self.db.execute(_OUTBOX_DDL)  # journals of schema 1 have it; older test files may not
        self._select = ", ".join(self.sample_columns)
        self._ev_cols = [r[1] for r in self.db.execute("PRAGMA table_info(events)")]
        self._me_cols = [r[1] for r in self.db.execute("PRAGMA table_info(metrics)")]

    def close(self) -> None:
        self.db.close()

    def data_version(self) -> int:
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta"))

    def channels(self) -> list[tuple[str, str, str]]:
        """(ch, run, descriptor JSON) of every channel, in journal order."""
        return list(self.db.execute("SELECT ch, run, descriptor FROM channels ORDER BY rowid"))

    def channel_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM channels").fetchone()[0]

    def heads(self, stream: str) -> dict[str, int]:
        """Highest committed seq per channel of a stream."""
        return dict(self.db.execute(f"SELECT ch, MAX(seq) FROM {stream} GROUP BY ch"))

    def head(self, stream: str, ch: str) -> int:
        row = self.db.execute(f"SELECT MAX(seq) FROM {stream} WHERE ch=?", (ch,)).fetchone()
        return -1 if row[0] is None else row[0]

    def samples(self, ch: str, first: int, last: int | None = None, limit: int = 2000) -> list[tuple]:
        """Sample rows (in `sample_columns` order) with first ≤ seq (≤ last), ordered by seq."""
        hi = (1 << 62) if last is None else last
        return self.db.execute(
            f"SELECT {self._select} FROM samples WHERE ch=? AND seq>=? AND seq<=? ORDER BY seq LIMIT ?",
            (ch, first, hi, limit)).fetchall()

    def rows(self, stream: str, ch: str, first: int, last: int | None = None,
             limit: int = 500) -> list[dict]:
        """events or metrics rows as dicts, first ≤ seq (≤ last)."""
        cols = self._ev_cols if stream == "events" else self._me_cols
        hi = (1 << 62) if last is None else last
        cur = self.db.execute(f"SELECT {', '.join(cols)} FROM {stream} WHERE ch=? AND seq>=? AND seq<=? "
                              "ORDER BY seq LIMIT ?", (ch, first, hi, limit))
        return [dict(zip(cols, r, strict=True)) for r in cur]

    def engine_states(self) -> dict[str, str]:
        try:
            return dict(self.db.execute("SELECT ch, state FROM engine_state"))
        except sqlite3.OperationalError:
            return {}

    def outbox(self) -> dict[tuple[str, str], int]:
        return {(ch, s): seq for ch, s, seq in self.db.execute("SELECT ch, stream, through_seq FROM outbox")}



def descriptor_json(text: str | None) -> dict:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


class OutboxWriter:
    """Writes acknowledged watermarks to the journal's ``outbox`` table on its own connection, meant
    for a worker thread: waiting for the engine's write lock must never stall the event loop."""

    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(f"file:{Path(path)}?mode=rw", uri=True, timeout=2.0,
                                  isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=2000")
        self.db.execute("PRAGMA synchronous=NORMAL")  # losing the outbox to a power cut only means resending
        self._lock = threading.Lock()

    def save(self, marks: dict[tuple[str, str], int]) -> None:
        """One tiny write transaction; raises sqlite3.Error when the journal stays locked."""
        if not marks:
            return
        with self._lock:
            self._save(marks)

    def _save(self, marks: dict[tuple[str, str], int]) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "INSERT INTO outbox(ch, stream, through_seq) VALUES (?, ?, ?) "
                "ON CONFLICT(ch, stream) DO UPDATE SET through_seq=MAX(through_seq, excluded.through_seq)",
                [(ch, s, seq) for (ch, s), seq in marks.items()])
            self.db.execute("COMMIT")
        except sqlite3.Error:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()
