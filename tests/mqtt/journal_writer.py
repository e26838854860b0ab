"""A small journal writer for MQTT tests and benchmarks: the documented schema (docs/architecture.md),
plain sqlite3, a synthetic galvanostatic signal. It stands in for the engine's writer: rows are
committed per tick, all channels in one transaction, like the engine does.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channels(ch TEXT PRIMARY KEY, run TEXT NOT NULL, descriptor TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples(
  ch TEXT NOT NULL, seq INTEGER NOT NULL,
  test_time_second REAL NOT NULL, unix_time_second REAL, step_time_second REAL,
  voltage_volt REAL, current_ampere REAL, temperature_t1_celsius REAL,
  cycle_count INTEGER NOT NULL, step_count INTEGER NOT NULL, step_id INTEGER NOT NULL,
  frequency_hertz REAL, real_impedance_ohm REAL, imaginary_impedance_ohm REAL,
  PRIMARY KEY (ch, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events(
  ch TEXT NOT NULL, seq INTEGER NOT NULL,
  kind TEXT NOT NULL, test_time_second REAL, unix_time_second REAL,
  cycle_count INTEGER, step_count INTEGER, sample_seq INTEGER,
  data TEXT NOT NULL,
  PRIMARY KEY (ch, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metrics(
  ch TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
  test_time_second REAL, cycle_count INTEGER, data TEXT NOT NULL,
  PRIMARY KEY (ch, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS engine_state(ch TEXT PRIMARY KEY, state TEXT NOT NULL, channel_state BLOB,
  unix_time_second REAL);
CREATE TABLE IF NOT EXISTS audit(id INTEGER PRIMARY KEY AUTOINCREMENT, unix_time_second REAL NOT NULL, ch TEXT,
  action TEXT NOT NULL, actor TEXT, source TEXT, request_id TEXT, args TEXT, result TEXT);
CREATE TABLE IF NOT EXISTS outbox(ch TEXT NOT NULL, stream TEXT NOT NULL, through_seq INTEGER NOT NULL,
  PRIMARY KEY (ch, stream));
"""

RUN = "01JDC3TESTRUN000000000000"


class SyntheticJournal:
    """Channels that alternate discharge/charge steps of `step_len` samples at `rate` Hz."""

    def __init__(self, path: Path, channels: list[str], rate: float = 10.0, step_len: int = 25,
                 run: str = RUN) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        self.channels, self.rate, self.step_len, self.run = channels, rate, step_len, run
        self.n = 0          # samples written per channel
        self.events = dict.fromkeys(channels, 0)
        self.metrics = dict.fromkeys(channels, 0)
        with self.tx():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('run_id', ?), ('schema_version', '1')", (run,))
            for ch in channels:
                desc = {"cell": {"active_mass_kg": 3.4e-6, "material": "hard carbon"},
                        "protocol": {"name": "synthetic GCD"}, "instrument": "sim:hard_carbon"}
                self.db.execute("INSERT OR REPLACE INTO channels VALUES (?, ?, ?)", (ch, run, json.dumps(desc)))
                self.db.execute("INSERT OR REPLACE INTO engine_state VALUES (?, 'running', NULL, ?)",
                                (ch, time.time()))
                self._event(ch, "run_start", 0.0, time.time(), 1, 0, 0, {"run": run, "protocol": "synthetic"})

    def tx(self):
        db = self.db

        class _Tx:
            def __enter__(self_inner):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, et, ev, tb):
                db.execute("COMMIT" if et is None else "ROLLBACK")

        return _Tx()

    def _event(self, ch, kind, t, unix, cycle, step, sample_seq, data) -> None:
        self.db.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)",
                        (ch, self.events[ch], kind, t, unix, cycle, step, sample_seq, json.dumps(data)))
        self.events[ch] += 1

    @staticmethod
    def signal(i: int, step_len: int, rate: float) -> tuple[float, float, int, int, int, float]:
        """(voltage, current, cycle_count, step_count, step_id, step_time) of sample i."""
        step = i // step_len
        k = i % step_len
        discharge = step % 2 == 0
        frac = k / step_len
        v = 1.2 - 1.1 * frac if discharge else 0.1 + 2.0 * frac
        cur = -1.0e-4 if discharge else 1.0e-4
        return v, cur, step // 2 + 1, step + 1, 1 if discharge else 2, k / rate

    def write(self, count: int, unix_now: float | None = None) -> None:
        """Append `count` samples to every channel in one transaction (with step events, metrics)."""
        rows, start = [], self.n
        unix_now = time.time() if unix_now is None else unix_now
        with self.tx():
            for i in range(start, start + count):
                v, cur, cycle, step, step_id, st = self.signal(i, self.step_len, self.rate)
                unix = unix_now - (start + count - 1 - i) / self.rate
                t = i / self.rate
                for j, ch in enumerate(self.channels):
                    if i % self.step_len == 0:
                        self._event(ch, "step_start", t, unix, cycle, step, i,
                                    {"step_id": step_id, "step_type": "ConstantCurrent",
                                     "current_ampere": cur, "name": "Discharge" if step_id == 1 else "Charge"})
                        if step_id == 2:
                            self.db.execute("INSERT INTO metrics VALUES (?,?,?,?,?,?)", (
                                ch, self.metrics[ch], "cycle", t, cycle,
                                json.dumps({"cycle_count": cycle, "discharge_capacity_ah": 1e-4 * self.step_len / self.rate / 3600,
                                            "charge_capacity_ah": None,
                                            "coulombic_efficiency": None if cycle == 1 else 0.98})))
                            self.metrics[ch] += 1
                    temp = 25.0 + 0.01 * j if i % 7 else math.nan  # NaN reaches the journal as NULL
                    rows.append((ch, i, t, unix, st, v + 1e-3 * j, cur, temp, cycle, step, step_id))
            self.db.executemany(
                "INSERT INTO samples(ch, seq, test_time_second, unix_time_second, step_time_second, voltage_volt,"
                " current_ampere, temperature_t1_celsius, cycle_count, step_count, step_id)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        self.n += count

    def set_state(self, ch: str, state: str) -> None:
        self.db.execute("UPDATE engine_state SET state=?, unix_time_second=? WHERE ch=?", (state, time.time(), ch))

    def close(self) -> None:
        self.db.close()


class FakeRunControl:
    """Stand-in for the engine's RunControl: a tiny state machine that writes the audit table."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=5000")
        self.calls: list[tuple] = []
        self.state: dict[str, str] = {}

    async def _act(self, action, ch, actor, source, request_id, allowed, new):
        state = self.state.get(ch, "running")
        ok = state in allowed
        result = "ok" if ok else f"cannot {action} a {state} channel"
        if ok:
            self.state[ch] = new
        self.calls.append((action, ch, actor, source, request_id, ok))
        self.db.execute("INSERT INTO audit(unix_time_second, ch, action, actor, source, request_id, args, result)"
                        " VALUES (?,?,?,?,?,?,?,?)", (time.time(), ch, action, actor, source, request_id, "{}", result))
        return ok, result

    async def pause(self, ch, actor="", source="", request_id=None):
        return await self._act("pause", ch, actor, source, request_id, ("running",), "paused")

    async def resume(self, ch, actor="", source="", request_id=None):
        return await self._act("resume", ch, actor, source, request_id, ("paused",), "running")

    async def stop(self, ch, actor="", source="", request_id=None):
        return await self._act("stop", ch, actor, source, request_id, ("running", "paused"), "stopped")

    async def skip(self, ch, actor="", source="", request_id=None):
        return await self._act("skip", ch, actor, source, request_id, ("running",), "running")

    async def abort(self, ch, actor="", source="", request_id=None):
        return await self._act("abort", ch, actor, source, request_id, ("running", "paused"), "aborted")
