"""The run journal's schema (version 1, docs/architecture.md) and its column lists.

One SQLite file per run. Sample columns are BDF machine names in BDF units (s, V, A, degC, Hz, ohm).
Additions beyond the architecture page: `samples.sweep_segment` (CV segment index, NULL elsewhere) and
the `programs` table (the compiled Program of each channel, so a resume runs exactly what was started),
and `engine_state.engine` (the engine's own state as JSON: step pointer, loop counters, cycle and step
counts, accumulated charge, next seq numbers; `engine_state.state` stays the plain channel state name).
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# Column order of the samples table; the engine builds its rows in this order.
SAMPLE_COLUMNS: tuple[str, ...] = (
    "seq",
    "test_time_second",
    "unix_time_second",
    "step_time_second",
    "voltage_volt",
    "current_ampere",
    "temperature_t1_celsius",
    "cycle_count",
    "step_count",
    "step_id",
    "frequency_hertz",
    "real_impedance_ohm",
    "imaginary_impedance_ohm",
    "sweep_segment",
)
INTEGER_SAMPLE_COLUMNS = frozenset({"seq", "cycle_count", "step_count", "step_id", "sweep_segment"})

EVENT_COLUMNS = ("seq", "kind", "test_time_second", "unix_time_second", "cycle_count", "step_count",
                 "sample_seq", "data")
METRIC_COLUMNS = ("seq", "kind", "test_time_second", "cycle_count", "data")

DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channels(ch TEXT PRIMARY KEY, run TEXT NOT NULL, descriptor TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS programs(ch TEXT PRIMARY KEY, program BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS samples(
  ch TEXT NOT NULL, seq INTEGER NOT NULL,
  test_time_second REAL NOT NULL, unix_time_second REAL, step_time_second REAL,
  voltage_volt REAL, current_ampere REAL, temperature_t1_celsius REAL,
  cycle_count INTEGER NOT NULL, step_count INTEGER NOT NULL, step_id INTEGER NOT NULL,
  frequency_hertz REAL, real_impedance_ohm REAL, imaginary_impedance_ohm REAL,
  sweep_segment INTEGER,
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
  unix_time_second REAL, engine TEXT);
CREATE TABLE IF NOT EXISTS audit(id INTEGER PRIMARY KEY AUTOINCREMENT, unix_time_second REAL NOT NULL,
  ch TEXT, action TEXT NOT NULL, actor TEXT, source TEXT, request_id TEXT, args TEXT, result TEXT);
CREATE TABLE IF NOT EXISTS outbox(ch TEXT NOT NULL, stream TEXT NOT NULL, through_seq INTEGER NOT NULL,
  PRIMARY KEY (ch, stream));
"""

INSERT_SAMPLE = (
    f"INSERT INTO samples(ch, {', '.join(SAMPLE_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in SAMPLE_COLUMNS)})"
)
INSERT_EVENT = (
    f"INSERT INTO events(ch, {', '.join(EVENT_COLUMNS)}) VALUES (?, {', '.join('?' for _ in EVENT_COLUMNS)})"
)
INSERT_METRIC = (
    f"INSERT INTO metrics(ch, {', '.join(METRIC_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in METRIC_COLUMNS)})"
)
UPSERT_STATE = (
    "INSERT INTO engine_state(ch, state, channel_state, unix_time_second, engine) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(ch) DO UPDATE SET state=excluded.state, "
    "channel_state=COALESCE(excluded.channel_state, engine_state.channel_state), "
    "unix_time_second=excluded.unix_time_second, engine=excluded.engine"
)
INSERT_AUDIT = (
    "INSERT INTO audit(unix_time_second, ch, action, actor, source, request_id, args, result) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
