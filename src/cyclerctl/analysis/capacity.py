"""Capacity, coulombic efficiency, energy and the rate-capability table, by coulomb counting.

Q = Σ ½(I_k + I_{k-1})·Δt over consecutive samples of the same step (trapezoid; exact for the
piecewise-constant current of a galvanostatic step). Intervals with I < 0 count as discharge
(sodiation of an anode half cell), I > 0 as charge. CE of an anode half cell (cycles start on the
discharge) = Q_charge / Q_discharge of the same cycle; of a cathode or full cell (cycles start on the
charge) = Q_discharge / Q_charge. Only steps that pass current on purpose count: constant current
and constant voltage (GCD, CCCV, GITT and ICI pulses). Rest, OCV, temperature, CV-sweep and EIS steps
do not: the ~nA an instrument reads at open circuit is noise, and a run of them alone is no cycle.
Energy = ∫ V|I| dt; mean voltage = energy / charge; hysteresis = V̄_charge − V̄_discharge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numba import njit

from .base import Event, KahanSum, MetricRow, column

AH = 3600.0  # C per A·h
# steps whose charge is not counted, by technique or BDF step type (either one excludes a step)
EXCLUDED_TECHNIQUES = frozenset({"cv", "eis", "rest", "ocv", "temperature"})
EXCLUDED_STEP_TYPES = frozenset({"REST", "OCV", "EIS", "CV_SWEEP", "TEMP"})


_NONE = np.empty(0)


@njit(cache=True, nogil=True)
def _segment_sums(t, v, i, sc, cyc, pt, pv, pi, ps, excluded):  # pragma: no cover - compiled
    """One pass over a block: interval k pairs sample k with sample k-1 (the previous block's last,
    pt, pv, pi, ps, for k = 0) and counts when both are in the same step, not one in `excluded`
    (sorted step counts), with ΔQ = ½(I_k + I_{k-1})Δt finite and Δt ≥ 0. Per run of one cycle
    number (a NaN cycle counts as 1): its first sample index, its cycle, and the sums of ΔQ, energy
    ½(V_k|I_k| + V_{k-1}|I_{k-1}|)Δt (where finite) and Δt over its intervals with ΔQ < 0 and with ΔQ > 0
    (columns q_neg, q_pos, e_neg, e_pos, t_neg, t_pos)."""
    n = t.shape[0]
    starts = np.empty(n, np.int64)
    cycles = np.empty(n, np.int64)
    sums = np.zeros((n, 6))
    segs = 0
    ta, va, ia, sa = pt, pv, pi, ps
    for k in range(n):
        tb, vb, ib, sb = t[k], v[k], i[k], sc[k]
        c = np.int64(cyc[k]) if np.isfinite(cyc[k]) else np.int64(1)
        if segs == 0 or c != cycles[segs - 1]:
            starts[segs] = k
            cycles[segs] = c
            segs += 1
        dt = tb - ta
        dq = 0.5 * (ib + ia) * dt
        ok = sa == sb and np.isfinite(dq) and dt >= 0.0
        if ok and excluded.shape[0] > 0:
            j = np.searchsorted(excluded, sb)
            ok = not (j < excluded.shape[0] and excluded[j] == sb)
        if ok and dq != 0.0:
            col = 0 if dq < 0.0 else 1
            s = segs - 1
            sums[s, col] += dq
            de = 0.5 * (vb * abs(ib) + va * abs(ia)) * dt
            if np.isfinite(de):
                sums[s, 2 + col] += de
            sums[s, 4 + col] += dt
        ta, va, ia, sa = tb, vb, ib, sb
    return starts[:segs], cycles[:segs], sums[:segs]


class _CycleAccumulator:
    __slots__ = ("cycle", "q_dis", "q_chg", "e_dis", "e_chg", "t_dis", "t_chg", "t_start", "t_end")

    def __init__(self, cycle: int, t_start: float) -> None:
        self.cycle = cycle
        self.q_dis, self.q_chg = KahanSum(), KahanSum()
        self.e_dis, self.e_chg = KahanSum(), KahanSum()
        self.t_dis, self.t_chg = KahanSum(), KahanSum()
        self.t_start = t_start
        self.t_end = t_start

    def add(self, q_neg: float, q_pos: float, e_neg: float, e_pos: float, t_neg: float, t_pos: float,
            t_end: float) -> None:
        """The charge, energy and time of intervals with ΔQ < 0 (discharge) and ΔQ > 0 (charge)."""
        self.q_dis.add(-q_neg)
        self.q_chg.add(q_pos)
        self.e_dis.add(e_neg)
        self.e_chg.add(e_pos)
        self.t_dis.add(t_neg)
        self.t_chg.add(t_pos)
        self.t_end = t_end


class CycleOperator:
    """Per-cycle capacity, CE, energy, mean voltages, retention and cumulative irreversible capacity
    (kind "cycle"), plus the rate-capability table (kind "rate": one row per run of cycles at the same
    discharge current). `current()` gives the latest completed cycle for loop conditions."""

    kind = "cycle"

    def __init__(self, active_mass: float | None = None, cycle_starts_on: str = "discharge",
                 reference_cycle: int | None = None, rate_tolerance: float = 0.03) -> None:
        self.active_mass = active_mass  # kg
        self.anode_convention = cycle_starts_on == "discharge"
        self.reference_cycle = reference_cycle
        self.rate_tolerance = rate_tolerance
        self._prev: tuple[float, float, float, float] | None = None  # t, V, I, step_count
        self._open: _CycleAccumulator | None = None
        self._excluded: set[float] = set()  # step counts of uncounted steps that may still get samples
        self._excluded_sorted = _NONE  # the same, as a sorted array (_segment_sums)
        # what later cycles refer to, kept small so memory does not grow with the cycles: the latest
        # cycle row, the first CE, and each cycle's reversible capacity (retention against any cycle)
        self.last: dict | None = None
        self._first_ce: float | None = None
        self._reversible: dict[int, float] = {}  # cycle -> reversible capacity (Ah), cycles that have one
        self._first_reversible: int | None = None
        self._irreversible = KahanSum()
        # the open rate group: (|mean discharge current|, CE, Q_dis, Q_chg, cycle, test time) per cycle
        self._rate_group: list[tuple] = []

    # ---- streaming -------------------------------------------------------------------------------

    def feed_event(self, event: Event) -> list[MetricRow]:
        if event.kind == "step_start" and event.step_count is not None:
            step = float(event.step_count)
            # in journal order the samples of earlier steps are all in: only this one's matter
            kept = {s for s in self._excluded if s >= step}
            if (str(event.data.get("technique") or "") in EXCLUDED_TECHNIQUES
                    or str(event.data.get("step_type") or "") in EXCLUDED_STEP_TYPES):
                kept.add(step)
            if kept != self._excluded:
                self._excluded = kept
                self._excluded_sorted = np.array(sorted(kept), dtype=np.float64) if kept else _NONE
            return []
        if event.kind == "run_end":
            rows = self._close_cycle()
            rows += self._close_rate_group()
            return rows
        return []

    def feed_samples(self, rows: Mapping[str, np.ndarray]) -> list[MetricRow]:
        t = column(rows, "test_time_second")
        if t.size == 0:
            return []
        v = column(rows, "voltage_volt")
        i = column(rows, "current_ampere")
        sc = column(rows, "step_count")
        cyc = column(rows, "cycle_count")
        if t.size == 1:
            return self._feed_one(float(t[0]), float(v[0]), float(i[0]), float(sc[0]), float(cyc[0]))
        prev = self._prev if self._prev is not None else (math.nan, math.nan, math.nan, math.nan)
        self._prev = (t[-1], v[-1], i[-1], sc[-1])
        starts, cycles, sums = _segment_sums(t, v, i, sc, cyc, float(prev[0]), float(prev[1]), float(prev[2]),
                                             float(prev[3]), self._excluded_sorted)
        out: list[MetricRow] = []
        ends = [*starts[1:].tolist(), t.size]
        for a, c, b, (q_neg, q_pos, e_neg, e_pos, t_neg, t_pos) in zip(starts.tolist(), cycles.tolist(), ends,
                                                                       sums.tolist(), strict=True):
            if self._open is None or self._open.cycle != c:
                out += self._close_cycle()
                self._open = _CycleAccumulator(c, float(t[a]))
            self._open.add(q_neg, q_pos, e_neg, e_pos, t_neg, t_pos, float(t[b - 1]))
        return out

    def _feed_one(self, t: float, v: float, i: float, sc: float, cyc: float) -> list[MetricRow]:
        """feed_samples for a block of one sample (real-time acquisition), on Python floats: the same
        interval rule and sums as _segment_sums."""
        pt, pv, pi, ps = self._prev if self._prev is not None else (math.nan, math.nan, math.nan, math.nan)
        self._prev = (t, v, i, sc)
        c = int(cyc) if math.isfinite(cyc) else 1
        out: list[MetricRow] = []
        if self._open is None or self._open.cycle != c:
            out += self._close_cycle()
            self._open = _CycleAccumulator(c, t)
        acc = self._open
        dt = t - pt
        dq = 0.5 * (i + pi) * dt
        q_neg = q_pos = e_neg = e_pos = t_neg = t_pos = 0.0
        if ps == sc and math.isfinite(dq) and dt >= 0.0 and dq != 0.0 and sc not in self._excluded:
            de = 0.5 * (v * abs(i) + pv * abs(pi)) * dt
            de = de if math.isfinite(de) else 0.0
            if dq < 0.0:
                q_neg, e_neg, t_neg = dq, de, dt
            else:
                q_pos, e_pos, t_pos = dq, de, dt
        acc.add(q_neg, q_pos, e_neg, e_pos, t_neg, t_pos, t)
        return out

    # ---- results ---------------------------------------------------------------------------------

    def _specific(self, q_c: float) -> float | None:
        if not self.active_mass:
            return None
        return q_c / 3.6 / (self.active_mass * 1e3)  # mAh/g

    def _close_cycle(self) -> list[MetricRow]:
        acc, self._open = self._open, None
        if acc is None:
            return []
        q_dis, q_chg = acc.q_dis.total, acc.q_chg.total
        if q_dis <= 0 and q_chg <= 0:
            return []
        first, second = (q_dis, q_chg) if self.anode_convention else (q_chg, q_dis)
        ce = second / first if first > 0 and second > 0 else None
        if first > 0 and second > 0:
            self._irreversible.add(first - second)
        reversible = second if second > 0 else None
        v_dis = acc.e_dis.total / q_dis if q_dis > 0 else None
        v_chg = acc.e_chg.total / q_chg if q_chg > 0 else None
        i_dis = -q_dis / acc.t_dis.total if acc.t_dis.total > 0 else None
        i_chg = q_chg / acc.t_chg.total if acc.t_chg.total > 0 else None
        rec = {
            "cycle_count": acc.cycle,
            "test_time_second": acc.t_end,
            "start_time_second": acc.t_start,
            "discharge_capacity_c": q_dis,
            "charge_capacity_c": q_chg,
            "discharge_capacity_ah": q_dis / AH,
            "charge_capacity_ah": q_chg / AH,
            "specific_discharge_capacity_mah_g": self._specific(q_dis),
            "specific_charge_capacity_mah_g": self._specific(q_chg),
            "coulombic_efficiency": ce,
            "reversible_capacity_ah": None if reversible is None else reversible / AH,
            "discharge_energy_wh": acc.e_dis.total / AH,
            "charge_energy_wh": acc.e_chg.total / AH,
            "mean_discharge_voltage_volt": v_dis,
            "mean_charge_voltage_volt": v_chg,
            "voltage_hysteresis_volt": (v_chg - v_dis) if v_dis is not None and v_chg is not None else None,
            "mean_discharge_current_ampere": i_dis,
            "mean_charge_current_ampere": i_chg,
            "cumulative_irreversible_capacity_ah": self._irreversible.total / AH,
        }
        self.last = rec
        if self._first_ce is None:
            self._first_ce = ce
        if reversible is not None:
            self._reversible.setdefault(acc.cycle, reversible / AH)
            if self._first_reversible is None:
                self._first_reversible = acc.cycle
        rec["initial_coulombic_efficiency"] = self._initial_ce()
        rec["reference_cycle"] = self.reference_cycle
        rec["capacity_retention"] = self.retention(self.reference_cycle, rec)
        rows = [MetricRow("cycle", rec)]
        rows += self._update_rate_group(rec)
        return rows

    def _initial_ce(self) -> float | None:
        return self._first_ce

    def retention(self, reference_cycle: int | None, rec: dict | None = None) -> float | None:
        """Reversible capacity of `rec` (default: the latest cycle) over that of `reference_cycle`
        (default: the first cycle with a reversible capacity)."""
        rec = rec if rec is not None else self.last
        if rec is None or rec["reversible_capacity_ah"] is None:
            return None
        key = self._first_reversible if reference_cycle is None else reference_cycle
        ref = self._reversible.get(key) if key is not None else None
        if not ref:
            return None
        return rec["reversible_capacity_ah"] / ref

    def current(self, reference_cycle: int | None = None) -> dict:
        """The latest completed cycle for loop conditions (SI: C, C/kg, fractions) and with units in
        the names. Empty values are None until a cycle completes."""
        rec = self.last
        ref = reference_cycle if reference_cycle is not None else self.reference_cycle
        if rec is None:
            keys = ("coulombic_efficiency", "discharge_capacity", "charge_capacity", "specific_discharge_capacity",
                    "specific_charge_capacity", "capacity_retention", "cycle_count")
            return dict.fromkeys(keys)
        mass = self.active_mass
        return {
            "cycle_count": rec["cycle_count"],
            "coulombic_efficiency": rec["coulombic_efficiency"],
            "discharge_capacity": rec["discharge_capacity_c"],
            "charge_capacity": rec["charge_capacity_c"],
            "specific_discharge_capacity": rec["discharge_capacity_c"] / mass if mass else None,
            "specific_charge_capacity": rec["charge_capacity_c"] / mass if mass else None,
            "capacity_retention": self.retention(ref, rec),
            "discharge_capacity_ah": rec["discharge_capacity_ah"],
            "charge_capacity_ah": rec["charge_capacity_ah"],
            "specific_discharge_capacity_mah_g": rec["specific_discharge_capacity_mah_g"],
            "specific_charge_capacity_mah_g": rec["specific_charge_capacity_mah_g"],
            "initial_coulombic_efficiency": self._initial_ce(),
        }

    # ---- rate capability ---------------------------------------------------------------------------

    def _update_rate_group(self, rec: dict) -> list[MetricRow]:
        i = rec["mean_discharge_current_ampere"]
        if i is None:
            return []
        rows: list[MetricRow] = []
        if self._rate_group:
            i_ref = self._rate_group[0][0]
            if not math.isclose(abs(i), i_ref, rel_tol=self.rate_tolerance):
                rows = self._close_rate_group()
        self._rate_group.append((abs(i), rec["coulombic_efficiency"], rec["discharge_capacity_ah"],
                                 rec["charge_capacity_ah"], rec["cycle_count"], rec["test_time_second"]))
        return rows

    def _close_rate_group(self) -> list[MetricRow]:
        group, self._rate_group = self._rate_group, []
        if not group:
            return []
        i = float(np.mean([g[0] for g in group]))
        ce = [g[1] for g in group if g[1] is not None]
        q_d = [g[2] for g in group]
        q_c = [g[3] for g in group]
        data = {
            "test_time_second": group[-1][5],
            "cycle_count": group[-1][4],
            "first_cycle": group[0][4],
            "last_cycle": group[-1][4],
            "n_cycles": len(group),
            "discharge_current_ampere": -i,
            "specific_current_ma_g": (i * 1e3 / (self.active_mass * 1e3)) if self.active_mass else None,
            "mean_discharge_capacity_ah": float(np.mean(q_d)),
            "mean_charge_capacity_ah": float(np.mean(q_c)),
            "last_charge_capacity_ah": q_c[-1],
            "mean_specific_discharge_capacity_mah_g": self._specific(float(np.mean(q_d)) * AH),
            "mean_specific_charge_capacity_mah_g": self._specific(float(np.mean(q_c)) * AH),
            "mean_coulombic_efficiency": float(np.mean(ce)) if ce else None,
        }
        return [MetricRow("rate", data)]
