"""Time series that cyclerctl did not record: read a BDF CSV/Parquet file, infer the steps from the
current, and produce the same ("samples", columns) / ("event", Event) stream a journal replay gives.

Columns: BDF machine names (`test_time_second`, `voltage_volt`, `current_ampere`, ...) or preferred
labels ("Test Time / s", "Voltage / V", "Current / A", ...); at least time, voltage and current.
Step inference, when the file has no step count (or always, with infer_steps=True):
- each sample is rest (|I| ≤ `rest_fraction`·max|I|), charge (I > 0) or discharge (I < 0); a step is a
  run of one state with a steady current (a jump of more than `current_jump` relative starts a new one);
- a train of ≥ 3 current steps of the same sign and similar length, each followed by a rest at least
  as long, is GITT (pulse/relax); current steps followed by short rests (≤ 10 % of the current step
  and ≤ 60 s) are ICI; other current steps are GCD; impedance rows (a frequency) are EIS.
- cycles (when the file has no cycle count) start on a discharge that follows a charge (anode half
  cell; on a charge after a discharge for cathode and full cells).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import units
from ..errors import ConfigError, CyclerError
from ..program import Cell
from .base import COLUMNS, Event

LABELS = {
    "test time / s": "test_time_second", "voltage / v": "voltage_volt", "current / a": "current_ampere",
    "step time / s": "step_time_second", "temperature t1 / degc": "temperature_t1_celsius",
    "cycle count / 1": "cycle_count", "step count / 1": "step_count", "step id / 1": "step_id",
    "step index / 1": "step_id", "frequency / hz": "frequency_hertz", "real impedance / ohm": "real_impedance_ohm",
    "imaginary impedance / ohm": "imaginary_impedance_ohm", "unix time / s": "unix_time_second",
    "ambient temperature / degc": "temperature_t1_celsius",
}
REQUIRED = ("test_time_second", "voltage_volt", "current_ampere")


def read_bdf(path: str | Path) -> dict[str, np.ndarray]:
    """The file's columns under BDF machine names (float64)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such file: {p}")
    name = p.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(p)
        elif name.endswith(".csv") or name.endswith(".bdf"):
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(p)
        else:
            raise ConfigError(f"{p.name}: expected a .bdf.csv, .csv, .bdf.parquet or .parquet file")
    except CyclerError:
        raise
    except Exception as exc:  # pyarrow raises its own error types for malformed files
        raise ConfigError(f"{p.name}: cannot read as BDF ({str(exc).splitlines()[0]})") from None
    cols: dict[str, np.ndarray] = {}
    for col in table.column_names:
        key = col if col in COLUMNS or col == "unix_time_second" else LABELS.get(col.strip().lower())
        if key is None or key in cols:
            continue
        try:
            cols[key] = np.asarray(table.column(col).to_numpy(zero_copy_only=False), dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"{p.name}: column {col!r} is not numeric") from None
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise ConfigError(f"{p.name}: missing column(s) {', '.join(missing)} (found: {', '.join(table.column_names)}); "
                          "BDF needs 'Test Time / s', 'Voltage / V' and 'Current / A'")
    t = cols["test_time_second"]
    if t.size == 0:
        raise ConfigError(f"{p.name}: the file has no rows")
    if np.any(np.diff(t) < 0):
        raise ConfigError(f"{p.name}: test time goes backwards (BDF time must be non-decreasing)")
    return cols


@dataclass
class InferredStep:
    start: int
    stop: int
    state: int  # -1 discharge, 0 rest, +1 charge, 2 impedance
    current: float
    technique: str = "gcd"
    role: str | None = None

    @property
    def step_type(self) -> str:
        return {-1: "CC_DCHG", 0: "REST", 1: "CC_CHG", 2: "EIS"}[self.state]


def infer_steps(cols: dict[str, np.ndarray], rest_fraction: float = 1e-3, current_jump: float = 0.05) -> list[InferredStep]:
    """Steps from the current (see the module docstring)."""
    i = cols["current_ampere"]
    t = cols["test_time_second"]
    f = cols.get("frequency_hertz")
    imax = float(np.nanmax(np.abs(i))) if np.isfinite(i).any() else 0.0
    eps = max(rest_fraction * imax, 1e-15)
    state = np.where(np.abs(np.nan_to_num(i)) <= eps, 0, np.sign(np.nan_to_num(i))).astype(np.int64)
    if f is not None:
        state = np.where(np.isfinite(f), 2, state)
    cut = np.flatnonzero(np.diff(state)) + 1
    i_f = np.nan_to_num(i)
    jump = (state[1:] == state[:-1]) & (np.abs(state[1:]) == 1) & \
        (np.abs(i_f[1:] - i_f[:-1]) > current_jump * np.maximum(np.abs(i_f[:-1]), eps))
    cut = np.union1d(cut, np.flatnonzero(jump) + 1)
    bounds = np.r_[0, cut, state.size].astype(np.int64)
    steps = [InferredStep(int(a), int(b), int(state[a]), float(np.median(i_f[a:b])))
             for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    for s in steps:
        s.technique = {0: "rest", 2: "eis"}.get(s.state, "gcd")
    dur = [float(t[min(s.stop, t.size - 1)] - t[s.start]) for s in steps]
    # GITT / ICI: current step + rest pairs
    k = 0
    while k + 1 < len(steps):
        run = []
        j = k
        while j + 1 < len(steps) and abs(steps[j].state) == 1 and steps[j + 1].state == 0 \
                and (not run or steps[j].state == steps[run[0]].state):
            run.append(j)
            j += 2
        if len(run) >= 3:
            pulses = np.array([dur[r] for r in run[:-1]])
            rests = np.array([dur[r + 1] for r in run[:-1]])
            similar = np.ptp(pulses) <= 0.2 * np.median(pulses) + 1e-9
            if similar and np.all(rests >= pulses):
                tech, roles = "gitt", ("pulse", "relax")
            elif similar and np.all(rests <= np.minimum(0.1 * pulses, 60.0)):
                tech, roles = "ici", ("current", "interruption")
            else:
                tech = None
            if tech:
                for r in run:
                    steps[r].technique, steps[r].role = tech, roles[0]
                    steps[r + 1].technique, steps[r + 1].role = tech, roles[1]
                k = run[-1] + 2
                continue
        k += 1
    return steps


def bdf_stream(cols: dict[str, np.ndarray], cell: Cell | None = None,
               cycle_starts_on: str = "discharge") -> Iterator[tuple[str, object]]:
    """The journal-like stream of a foreign time series: step_start events and sample columns.
    Step counts are always the inferred ones (a file's Step ID is kept)."""
    n = cols["test_time_second"].size
    t = cols["test_time_second"]
    steps = infer_steps(cols)
    out = {c: cols.get(c, np.full(n, np.nan)) for c in COLUMNS}
    out["step_count"] = np.zeros(n)
    for k, s in enumerate(steps):
        out["step_count"][s.start:s.stop] = k
    if "step_id" not in cols:
        out["step_id"] = out["step_count"].copy()
    if "cycle_count" not in cols:
        target = -1 if cycle_starts_on == "discharge" else 1
        cyc, last, c = np.ones(n), 0, 1
        for s in steps:
            if abs(s.state) == 1:
                if s.state == target and last == -target:
                    c += 1
                last = s.state
            cyc[s.start:s.stop] = c
        out["cycle_count"] = cyc
    st = np.empty(n)
    for s in steps:
        st[s.start:s.stop] = t[s.start:s.stop] - t[s.start]
    if "step_time_second" not in cols:
        out["step_time_second"] = st
    yield "event", Event("run_start", float(t[0]), int(out["cycle_count"][0]), 0, 0,
                         {"cell": {} if cell is None else {"active_mass": cell.active_mass}})
    for k, s in enumerate(steps):
        data = {"step_id": k, "step_type": s.step_type, "technique": s.technique, "name": f"inferred {s.technique}",
                "tags": {"role": s.role} if s.role else {}, "current_ampere": 0.0 if s.state == 0 else s.current}
        yield "event", Event("step_start", float(t[s.start]), int(out["cycle_count"][s.start]),
                             int(out["step_count"][s.start]), s.start, data)
        yield "samples", {c: v[s.start:s.stop] for c, v in out.items()}
        yield "event", Event("step_end", float(t[s.stop - 1]), int(out["cycle_count"][s.stop - 1]),
                             int(out["step_count"][s.stop - 1]), s.stop, {"step_id": k, "reason": "end"})
    yield "event", Event("run_end", float(t[-1]), int(out["cycle_count"][-1]), int(out["step_count"][-1]), n,
                         {"status": "completed"})


def load_cell_file(path: str | Path) -> Cell:
    """A cell YAML (the keys of a protocol's cell block, optionally under `cell:`), plus the analysis
    key `particle_radius` (e.g. "3.5 um")."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--cell: no such file {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(data, dict) and set(data) == {"cell"}:
        data = data["cell"]
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a cell file is a mapping such as 'active_mass: 3.4 mg'")
    data = dict(data)
    radius = data.pop("particle_radius", None)
    from ..protocol.cell import resolve_cell

    try:
        cell = resolve_cell(None, data)
    except CyclerError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    if radius is not None:
        try:
            r = units.parse(radius, "length")
        except CyclerError as exc:
            raise ConfigError(f"{p}: particle_radius: {exc}") from None
        if not (r > 0 and math.isfinite(r)):
            raise ConfigError(f"{p}: particle_radius must be positive, got {radius!r}")
        from dataclasses import replace

        cell = replace(cell, particle_radius=r)
    return cell
