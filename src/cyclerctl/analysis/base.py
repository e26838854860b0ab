"""The shared vocabulary of the analysis operators: metric rows, journal events, the Operator protocol.

An operator is pure and incremental: it sees the samples and events of one channel in journal order
(`feed_samples` with columns of the samples table, `feed_event` with an events-table row) and returns
the metric rows that became final with that input. Fed the same rows in any block split, it returns
the same metric rows; this is what makes live analysis and `cyclerctl analyze` agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

# Physical constants (CODATA 2018)
FARADAY = 96485.33212  # C/mol
GAS_CONSTANT = 8.314462618  # J/(mol K)
KELVIN_OFFSET = 273.15

COLUMNS = (
    "test_time_second", "voltage_volt", "current_ampere", "step_time_second", "temperature_t1_celsius",
    "cycle_count", "step_count", "step_id", "frequency_hertz", "real_impedance_ohm", "imaginary_impedance_ohm",
)
KINDS = ("cycle", "rate", "dqdv", "gitt", "ici", "cv", "eis", "arrhenius")


def json_safe(value: Any) -> Any:
    """A JSON-ready copy: numpy scalars -> Python, arrays -> lists, NaN/inf -> None."""
    kind = type(value)  # the plain Python types first (a metric row is mostly floats)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        return {str(k): json_safe(v) for k, v in value.items()}
    if kind is list:
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return [json_safe(v) for v in value.tolist()]
        return value.tolist()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    return value


@dataclass(slots=True)
class MetricRow:
    """One result row. `kind` names the metric table (cycle|rate|dqdv|gitt|ici|cv|eis|arrhenius);
    `data` keys carry units (`discharge_capacity_ah`, `diffusion_coefficient_cm2_s`, ...), values are
    JSON-safe (None for missing, never NaN). `data` always holds `test_time_second` and, where it
    applies, `cycle_count`."""

    kind: str
    data: dict[str, Any]

    def __post_init__(self) -> None:
        self.data = json_safe(self.data)


@dataclass(slots=True)
class Event:
    """An events-table row (docs/architecture.md). `sample_seq` is the seq of the next sample when
    the event happened; `data` is the decoded JSON object."""

    kind: str
    test_time_second: float | None = None
    cycle_count: int | None = None
    step_count: int | None = None
    sample_seq: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ch: str = ""
    seq: int = 0
    unix_time_second: float | None = None

    @property
    def technique(self) -> str | None:
        return self.data.get("technique")

    @property
    def tags(self) -> dict[str, Any]:
        tags = self.data.get("tags") or {}
        return dict(tags) if isinstance(tags, Mapping) else dict(tags)


@runtime_checkable
class Operator(Protocol):
    """A pure, incremental analysis of one channel's journal stream."""

    kind: str

    def feed_samples(self, rows: Mapping[str, np.ndarray]) -> list[MetricRow]:
        """Columns of the samples table (equal-length arrays; NULL arrives as NaN)."""

    def feed_event(self, event: Event) -> list[MetricRow]:
        """One events-table row, in journal order relative to the samples."""


def column(rows: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """Column `name` as float64; all-NaN when the stream does not carry it."""
    n = len(rows["test_time_second"])
    a = rows.get(name)
    if a is None:
        return np.full(n, np.nan)
    return np.asarray(a, dtype=np.float64)


class KahanSum:
    """Compensated running sum (coulomb counting over months of samples)."""

    __slots__ = ("total", "_c")

    def __init__(self) -> None:
        self.total = 0.0
        self._c = 0.0

    def add(self, x: float) -> None:
        y = x - self._c
        t = self.total + y
        self._c = (t - self.total) - y
        self.total = t


def finite_or_none(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
