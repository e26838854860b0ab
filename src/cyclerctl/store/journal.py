"""The run journal writer: one SQLite database per run, WAL, synchronous=FULL, one writer.

The engine stages rows per channel (samples, events, metrics) on the event-loop thread; `commit()`
takes a snapshot of every staged channel's engine state (and the channel's own saved state, e.g. the
simulator's model) and writes all of it in ONE transaction (the disk sync in a worker thread), so what is on disk is
always a consistent point of every channel: the samples up to seq N together with the state that
produced them. A crash loses at most what was staged since the last commit; `cyclerctl resume`
continues from the committed state.

Failure rule: any error while writing (disk full, I/O error, locked database) rolls the transaction
back and raises JournalError; the engine then puts every channel in its safe state and stops. The
journal holds the last committed point, so the run can be resumed once the disk is fixed.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import JournalError
from . import schema

JOURNAL_NAME = "journal.sqlite"
ROWS_PER_STATEMENT = 96  # sample rows per INSERT statement (at most 999 parameters: see _insert_samples)
KICK_GAP = 0.01  # s of wall time: commits asked for early (kick) come at most this often
INSERT_STATEMENTS_AT_ONCE = 64  # multi-row statements per executemany (bounds the Python floats alive)
FEW_ROWS = 8  # channels with at most this many rows in a commit share one INSERT batch

# (state name, engine state JSON, channel state) of a channel at the moment of a commit
Snapshot = Callable[[bool], tuple[str, str, bytes | None] | None]  # (samples_only) -> state row or None


@dataclass(slots=True)
class _Pending:
    samples: list[np.ndarray] = field(default_factory=list)  # 2-D float64, columns = SAMPLE_COLUMNS
    events: list[tuple] = field(default_factory=list)
    metrics: list[tuple] = field(default_factory=list)
    n_samples: int = 0


class CommittedFeed:
    """Sample rows of the latest commits for an in-process reader (the MQTT publisher), handed over
    only after their COMMIT returned (journal first, publish second), so the reader need not read them
    back from the disk. Bounded: beyond `max_rows` the oldest blocks are dropped; a reader that fell
    that far behind reads those rows from the journal, as after a reconnect."""

    def __init__(self, max_rows: int = 200_000) -> None:
        self.max_rows = int(max_rows)
        self._blocks: dict[str, deque[np.ndarray]] = {}
        self._rows = 0
        self._lock = threading.Lock()
        self._taken = threading.Condition(self._lock)
        self.pushed = 0  # blocks handed over so far

    def push(self, ch: str, rows: np.ndarray, wait: float = 0.0) -> None:
        """rows: committed samples of `ch` (columns schema.SAMPLE_COLUMNS, consecutive seq). `wait`:
        seconds to wait for the reader to make room before the oldest rows are dropped (a pusher that
        may block, e.g. the thread reading the engine's pipe: at max speed one commit holds ~100,000
        rows, and dropping them would send the reader to the journal for everything after)."""
        with self._lock:
            if wait > 0:
                self._taken.wait_for(lambda: self._rows == 0 or self._rows + len(rows) <= self.max_rows, wait)
            self.pushed += 1
            self._blocks.setdefault(ch, deque()).append(rows)
            self._rows += len(rows)
            while self._rows > self.max_rows:  # drop the oldest block of the longest queue
                longest = max(self._blocks.values(), key=lambda q: sum(len(a) for a in q))
                if not longest:
                    break
                self._rows -= len(longest.popleft())

    def take(self, ch: str, first_seq: int, limit: int) -> np.ndarray | None:
        """Up to `limit` committed rows of `ch` starting exactly at `first_seq` (older rows are
        discarded), or None when the feed does not hold that seq (read it from the journal)."""
        with self._lock:
            q = self._blocks.get(ch)
            parts: list[np.ndarray] = []
            n = 0
            nxt = first_seq
            while q and n < limit:
                a = q[0]
                lo = int(a[0, 0])
                hi = lo + len(a)  # seq are consecutive within a commit
                if hi <= nxt:
                    self._rows -= len(q.popleft())
                    continue
                if lo > nxt:
                    break
                part = a[nxt - lo:nxt - lo + limit - n]
                parts.append(part)
                n += len(part)
                nxt += len(part)
                if nxt >= hi:
                    self._rows -= len(q.popleft())
                else:
                    break
            self._taken.notify_all()
            if not parts:
                return None
            return parts[0] if len(parts) == 1 else np.concatenate(parts)


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to a journal. Readers use readonly=True (they never block the writer in WAL)."""
    p = Path(path)
    if p.is_dir():
        p = p / JOURNAL_NAME
    if not p.is_file():
        raise JournalError(f"no run journal at {p}; give a run directory made by `cyclerctl run`")
    if readonly:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(p, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class Journal:
    """The single writer of a run's journal."""

    def __init__(self, path: str | Path, *, commit_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.commit_interval = float(commit_interval)
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                         cached_statements=4096)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.executescript(schema.DDL)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the run journal {self.path}: {exc}") from exc
        self._pending: dict[str, _Pending] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._audit: list[tuple] = []
        self._ch_sql: dict[str, str] = {}  # ch -> its SQL literal
        self._insert_sql: dict[tuple[str | None, bytes, int], str] = {}  # (ch, columns with a value, rows) -> INSERT
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Future | None = None
        self._kick: asyncio.Event | None = None
        self._waiters: list[asyncio.Future] = []  # flush() callers served by the next commit
        self._setup: list[tuple] = []
        self._db_lock = threading.Lock()
        self._last_commit = time.monotonic()
        self.commits = 0
        self.waited = 0.0  # s the engine waited for a commit in flight (the disk sync; backpressure)
        self.sync_time = 0.0  # s spent in COMMIT (worker thread)
        self.rows_committed = 0
        self.failed: JournalError | None = None
        self.on_commit: list[Callable[[dict[str, int]], None]] = []  # callbacks: samples committed per ch
        self.feeds: list[CommittedFeed] = []  # committed sample rows for in-process readers

    # ---- setup ---------------------------------------------------------------------------------

    def set_meta(self, values: dict[str, str]) -> None:
        with self._db_lock:
            self._write(lambda c: c.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                [(k, str(v)) for k, v in values.items()]))

    def add_channel(self, ch: str, run: str, descriptor: dict, program_blob: bytes | None,
                    snapshot: Snapshot, *, defer: bool = False) -> None:
        """Declare a channel (idempotent on resume) and the callable that snapshots its state.
        defer=True keeps the rows for write_setup(), which writes a new run's setup in one transaction."""
        row = (ch, run, json.dumps(descriptor), program_blob)
        if defer:
            self._setup.append(row)
        else:
            with self._db_lock:
                self._write(lambda c: self._write_channel(c, row))
        self._snapshots[ch] = snapshot
        self._ch_sql[ch] = _sql_text(ch)

    @staticmethod
    def _write_channel(c: sqlite3.Connection, row: tuple) -> None:
        ch, run, descriptor, program_blob = row
        c.execute("INSERT INTO channels(ch, run, descriptor) VALUES (?, ?, ?) ON CONFLICT(ch) "
                  "DO UPDATE SET descriptor=excluded.descriptor", (ch, run, descriptor))
        if program_blob is not None:
            c.execute("INSERT OR IGNORE INTO programs(ch, program) VALUES (?, ?)", (ch, program_blob))

    def write_setup(self, meta: dict[str, str]) -> None:
        """The meta rows and every deferred channel of a new run, in one transaction: a journal
        either has its whole setup or none of it."""
        rows, self._setup = self._setup, []

        def write(c: sqlite3.Connection) -> None:
            c.executemany("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                          "value=excluded.value", [(k, str(v)) for k, v in meta.items()])
            for row in rows:
                self._write_channel(c, row)

        with self._db_lock:
            self._write(write)

    # ---- staging (event-loop thread, never blocks) -------------------------------------------------

    def stage_samples(self, ch: str, rows: np.ndarray) -> None:
        """rows: 2-D float64 array, columns in schema.SAMPLE_COLUMNS order (NaN = NULL)."""
        p = self._pending.setdefault(ch, _Pending())
        p.samples.append(rows)
        p.n_samples += len(rows)

    def stage_event(self, ch: str, row: tuple) -> None:
        """row: values of schema.EVENT_COLUMNS (data as a JSON string)."""
        self._pending.setdefault(ch, _Pending()).events.append(row)

    def stage_metric(self, ch: str, row: tuple) -> None:
        """row: values of schema.METRIC_COLUMNS (data as a JSON string)."""
        self._pending.setdefault(ch, _Pending()).metrics.append(row)

    def touch(self, ch: str) -> None:
        """Mark a channel's state as changed (it will be snapshotted at the next commit)."""
        self._pending.setdefault(ch, _Pending())

    def stage_audit(self, ch: str | None, action: str, actor: str | None, source: str | None,
                    request_id: str | None, args: dict | None, result: str) -> None:
        self._audit.append((time.time(), ch, action, actor, source, request_id,
                            json.dumps(args or {}), result))

    def kick(self) -> None:
        """Ask the background committer (run_committer) to commit now."""
        if self._kick is not None:
            self._kick.set()

    async def run_committer(self, stop: asyncio.Event) -> None:
        """Commit every commit_interval seconds of wall time (and when kicked) until `stop` is set.
        Used in wall-clock runs, so acquisition never waits for the disk. Ends on a JournalError
        (the runners see `failed` at their next block and go safe)."""
        self._kick = asyncio.Event()
        next_at = time.monotonic() + self.commit_interval
        try:
            while not stop.is_set():
                try:  # a fixed rate: the time a commit takes is not added to the interval
                    await asyncio.wait_for(self._kick.wait(), max(0.0, next_at - time.monotonic()))
                except TimeoutError:
                    pass
                self._kick.clear()
                # kicks in quick succession (channels starting or ending steps one after another)
                # share one commit: at most one commit per KICK_GAP
                gap = self._last_commit + min(KICK_GAP, self.commit_interval) - time.monotonic()
                if gap > 0 and not stop.is_set():
                    await asyncio.sleep(gap)
                next_at = time.monotonic() + self.commit_interval
                try:
                    await self.commit()
                except JournalError:
                    return
        finally:
            self._kick = None
            if self._waiters and self.failed is None:
                try:
                    await self.commit()  # flush() callers that came after the last commit
                except JournalError:
                    pass
            self._release(self._waiters, self.failed)
            self._waiters = []

    async def flush(self) -> None:
        """Return once everything staged so far is committed. With the background committer
        running this asks it to commit now and waits for that commit, so channels ending at the same
        moment share one transaction instead of queueing one each; otherwise it commits itself."""
        if self._kick is None:
            await self.commit()
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._kick.set()
        await fut

    @staticmethod
    def _release(waiters: list[asyncio.Future], exc: BaseException | None) -> None:
        for f in waiters:
            if not f.done():
                if exc is None:
                    f.set_result(None)
                else:
                    f.set_exception(exc)

    def due(self) -> bool:
        """True when the last commit is older than commit_interval seconds of wall time."""
        return time.monotonic() - self._last_commit >= self.commit_interval

    @property
    def staged_samples(self) -> int:
        return sum(p.n_samples for p in self._pending.values())

    # ---- commit ----------------------------------------------------------------------------------

    async def commit(self, wait: bool = True) -> None:
        """Write everything staged (all channels) in one transaction.

        The rows are inserted on the calling (event-loop) thread, which is fast; only COMMIT, where
        SQLite syncs the WAL to disk, runs in a worker thread. wait=False returns once the COMMIT has
        started, so the control loop keeps going while the disk syncs; at most one commit is in
        flight (the next call waits for it: backpressure). A failed commit raises JournalError from
        the next call (and from every one after it)."""
        async with self._lock:
            prev = self._inflight
            if prev is not None:
                self._inflight = None
                t = time.perf_counter()
                await prev
                self.waited += time.perf_counter() - t
            waiters, self._waiters = self._waiters, []
            try:
                batch, audit, states = self._take()
                if not (batch or audit):
                    self._release(waiters, None)
                    return
                counts = self._insert(batch, audit, states)
            except JournalError as exc:
                self._release(waiters, exc)
                raise
            fut = asyncio.ensure_future(asyncio.to_thread(self._sync, counts))
            if waiters:
                fut.add_done_callback(lambda f: self._release(
                    waiters, asyncio.CancelledError() if f.cancelled() else f.exception()))
            if wait:
                await fut
            else:
                self._inflight = fut

    def commit_sync(self) -> None:
        """commit() for callers outside the event loop (shutdown paths)."""
        if self._inflight is not None and not self._inflight.done():
            raise RuntimeError("commit_sync while a commit is in flight")
        batch, audit, states = self._take()
        if batch or audit:
            self._sync(self._insert(batch, audit, states))

    def _take(self):
        if self.failed is not None:
            raise self.failed
        batch, self._pending = self._pending, {}
        audit, self._audit = self._audit, []
        states = {}
        unix = time.time()
        for ch, p in batch.items():
            snap = self._snapshots.get(ch)
            if snap is not None:
                got = snap(bool(p.samples) and not p.events and not p.metrics)
                if got is not None:
                    name, engine_json, channel_state = got
                    states[ch] = (ch, name, channel_state, unix, engine_json)
        self._last_commit = time.monotonic()
        return batch, audit, states

    def _insert(self, batch: dict[str, _Pending], audit: list[tuple], states: dict) -> dict[str, np.ndarray]:
        """BEGIN and every INSERT of one commit; returns the sample rows per channel."""
        counts: dict[str, np.ndarray] = {}
        c = self._conn
        with self._db_lock:
            try:
                c.execute("BEGIN IMMEDIATE")
                few: list[tuple[str, np.ndarray]] = []  # channels with a few rows: one INSERT for all
                for ch, p in batch.items():
                    if p.samples:
                        rows = p.samples[0] if len(p.samples) == 1 else np.concatenate(p.samples)
                        if len(rows) <= FEW_ROWS:
                            few.append((ch, rows))
                        else:
                            self._insert_samples(c, ch, rows)
                        counts[ch] = rows
                    if p.events:
                        c.executemany(schema.INSERT_EVENT, [(ch, *e) for e in p.events])
                    if p.metrics:
                        c.executemany(schema.INSERT_METRIC, [(ch, *m) for m in p.metrics])
                if few:
                    self._insert_few(c, few)
                if states:
                    c.executemany(schema.UPSERT_STATE, list(states.values()))
                if audit:
                    c.executemany(schema.INSERT_AUDIT, audit)
            except sqlite3.Error as exc:
                self._fail(exc)
        return counts

    def _insert_samples(self, c: sqlite3.Connection, ch: str, rows: np.ndarray) -> None:
        """INSERT the rows, binding only the columns that hold a value in this batch (a column that
        is NULL throughout, e.g. impedance during cycling, is left to its default NULL), up to 96 rows
        per statement (multi-row VALUES): fewer Python floats to make and bind, fewer statement steps."""
        used = ~np.isnan(rows).all(axis=0)
        used[0] = True  # seq
        values = rows if used.all() else rows[:, used]
        width = values.shape[1]
        per = max(1, min(ROWS_PER_STATEMENT, 999 // width))  # 999: the oldest SQLite's parameter limit
        whole = len(values) // per * per
        if whole:
            sql = self._insert_statement(ch, used, per)
            # a few thousand rows at a time: the Python floats of a second's rows at max speed (~25 MB
            # for 100,000 rows) would otherwise all exist at once
            step = per * INSERT_STATEMENTS_AT_ONCE
            for a in range(0, whole, step):
                c.executemany(sql, values[a:min(a + step, whole)].reshape(-1, per * width).tolist())
        if whole < len(values):
            c.executemany(self._insert_statement(ch, used, 1), values[whole:].tolist())

    def _insert_few(self, c: sqlite3.Connection, few: list[tuple[str, np.ndarray]]) -> None:
        """INSERT the rows of many channels with a few rows each (a rack in real-time mode commits
        about one sample per channel) as one batch with the channel bound per row: the fixed cost of
        a statement per channel would otherwise dominate."""
        rows = few[0][1] if len(few) == 1 else np.concatenate([r for _, r in few])
        used = ~np.isnan(rows).all(axis=0)
        used[0] = True  # seq
        values = (rows if used.all() else rows[:, used]).tolist()
        k = 0
        for ch, r in few:
            for _ in range(len(r)):
                values[k].insert(0, ch)
                k += 1
        width = len(values[0])
        per = max(1, min(ROWS_PER_STATEMENT, 999 // width))
        whole = len(values) // per * per
        if whole:
            flat = [x for v in values[:whole] for x in v]
            step = per * width
            c.executemany(self._insert_statement(None, used, per),
                          [flat[i:i + step] for i in range(0, len(flat), step)])
        if whole < len(values):
            c.executemany(self._insert_statement(None, used, 1), values[whole:])

    def _insert_statement(self, ch: str | None, used: np.ndarray, per: int) -> str:
        """The INSERT of `per` rows of the `used` columns; ch None: the channel is bound per row."""
        key = (ch, used.tobytes(), per)
        sql = self._insert_sql.get(key)
        if sql is None:
            names = [n for n, u in zip(schema.SAMPLE_COLUMNS, used, strict=True) if u]
            one = f"({'?' if ch is None else self._ch_sql[ch]}, {', '.join('?' for _ in names)})"
            sql = f"INSERT INTO samples(ch, {', '.join(names)}) VALUES {', '.join([one] * per)}"
            self._insert_sql[key] = sql
        return sql

    def _sync(self, committed: dict[str, np.ndarray]) -> None:
        """COMMIT (the WAL is synced to disk here: synchronous=FULL), then hand the rows to the feeds."""
        t = time.perf_counter()
        with self._db_lock:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._fail(exc)
        self.sync_time += time.perf_counter() - t
        counts = {ch: len(rows) for ch, rows in committed.items()}
        self.commits += 1
        self.rows_committed += sum(counts.values())
        for feed in self.feeds:
            for ch, rows in committed.items():
                feed.push(ch, rows)
        for cb in self.on_commit:
            cb(counts)

    def _write(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        c = self._conn
        try:
            c.execute("BEGIN IMMEDIATE")
            fn(c)
            c.execute("COMMIT")
        except sqlite3.Error as exc:
            self._fail(exc)

    def _fail(self, exc: sqlite3.Error) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.failed = JournalError(
            f"cannot write the run journal {self.path}: {exc} — the channels were put in their safe "
            f"state; fix the disk (free space, permissions) and continue with `cyclerctl resume "
            f"{self.path.parent}`")
        raise self.failed from exc

    def close(self) -> None:
        try:
            with self._db_lock:
                self._conn.close()
        except sqlite3.Error:
            pass

    @property
    def connection(self) -> sqlite3.Connection:
        """The writer's connection, for setup and tests (use only from the writer's side)."""
        return self._conn


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def create_meta(run_id: str, run_json: dict) -> dict[str, str]:
    return {
        "run_id": run_id,
        "schema_version": str(schema.SCHEMA_VERSION),
        "software_version": __version__,
        "created_unix": repr(time.time()),
        "run_json": json.dumps(run_json),
    }


def iter_rows(conn: sqlite3.Connection, sql: str, params: Iterable = (), size: int = 100_000):
    """Fetch a query in chunks (bounded memory for long runs)."""
    cur = conn.execute(sql, tuple(params))
    while True:
        rows = cur.fetchmany(size)
        if not rows:
            return
        yield rows
