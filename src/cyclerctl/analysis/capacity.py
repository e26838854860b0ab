"""Capacity, coulombic efficiency, energy and the rate-capability table, by coulomb counting.

Q = Σ ½(I_k + I_{k-1})·Δt over consecutive samples of the same step (trapezoid; exact for the
piecewise-constant current of a galvanostatic step). Intervals with I < 0 count as discharge
(sodiation of an anode half cell), I > 0 as charge. CE of an anode half cell (cycles start on the
discharge) = Q_charge / Q_discharge of the same cycle; of a cathode or full cell (cycles start on the
charge) = Q_discharge / Q_charge. Steps of the techniques CV and EIS are not counted.
Energy = ∫ V|I| dt; mean voltage = energy / charge; hysteresis = V̄_charge − V̄_discharge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .base import Event, KahanSum, MetricRow, column

AH = 3600.0  # C per A·h
EXCLUDED_TECHNIQUES = frozenset({"cv", "eis"})


class _CycleAccumulator:
    __slots__ = ("cycle", "q_dis", "q_chg", "e_dis", "e_chg", "t_dis", "t_chg", "t_start", "t_end")

    def __init__(self, cycle: int, t_start: float) -> None:
        self.cycle = cycle
        self.q_dis, self.q_chg = KahanSum(), KahanSum()
        self.e_dis, self.e_chg = KahanSum(), KahanSum()
        self.t_dis, self.t_chg = KahanSum(), KahanSum()
        self.t_start = t_start
        self.t_end = t_start


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
        self._excluded: set[float] = set()  # step counts of CV and EIS steps
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
            if str(event.data.get("technique") or "") in EXCLUDED_TECHNIQUES:
                self._excluded.add(float(event.step_count))
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
        # each interval pairs a sample with the one before it (the previous block's last for the first)
        pairs = np.empty((4, t.size + 1))
        pairs[:, 0] = self._prev if self._prev is not None else np.nan
        pairs[0, 1:], pairs[1, 1:], pairs[2, 1:], pairs[3, 1:] = t, v, i, sc
        self._prev = (t[-1], v[-1], i[-1], sc[-1])
        before = pairs[:, :-1]
        dt = t - before[0]
        dq = 0.5 * (i + before[2]) * dt
        vi = pairs[1] * np.abs(pairs[2])  # V·|I| at each sample
        de = 0.5 * (vi[1:] + vi[:-1]) * dt
        ok = (before[3] == sc) & np.isfinite(dq) & (dt >= 0)
        if self._excluded and (sc[0] in self._excluded or sc[-1] in self._excluded or sc[0] != sc[-1]):
            ok &= ~np.isin(sc, list(self._excluded))
        # the counted intervals' charge, energy and duration, split by the sign of the charge:
        # per cycle segment, sums = parts @ [I < 0, I > 0] (one product instead of masked sums)
        parts = np.zeros((3, t.size))
        np.copyto(parts[0], dq, where=ok)
        np.copyto(parts[1], de, where=ok & np.isfinite(de))
        np.copyto(parts[2], dt, where=ok)
        sign = np.empty((2, t.size))
        sign[0] = parts[0] < 0.0
        sign[1] = parts[0] > 0.0

        out: list[MetricRow] = []
        c0 = cyc[0]
        if math.isfinite(c0) and c0 == cyc[-1] and (cyc == c0).all():  # one cycle in the block
            cyc_filled, bounds = None, [0, t.size]
        else:
            cyc_filled = np.where(np.isfinite(cyc), cyc, 1.0).astype(np.int64)
            change = np.flatnonzero(cyc_filled[1:] != cyc_filled[:-1]) + 1
            bounds = [0, *change.tolist(), t.size]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            c = int(c0) if cyc_filled is None else int(cyc_filled[a])
            if self._open is None or self._open.cycle != c:
                out += self._close_cycle()
                self._open = _CycleAccumulator(c, float(t[a]))
            acc = self._open
            (q_neg, q_pos), (e_neg, e_pos), (t_neg, t_pos) = (parts[:, a:b] @ sign[:, a:b].T).tolist()
            acc.q_dis.add(-q_neg)
            acc.q_chg.add(q_pos)
            acc.e_dis.add(e_neg)
            acc.e_chg.add(e_pos)
            acc.t_dis.add(t_neg)
            acc.t_chg.add(t_pos)
            acc.t_end = float(t[b - 1])
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
