"""Cyclic voltammetry: peaks per sweep, peak potential against log(scan rate), b-values, the Dunn
capacitive/diffusive split and Randles–Sevcik D where it applies.

- Branches: the potential's direction with a hysteresis of `vertex_hysteresis` (noise does not make
  vertices). Anodic = rising potential (oxidation, desodiation of the anode, i > 0).
- Each branch's current is averaged onto a fixed potential grid (`bin_width`, 1 mV); peaks are found
  on that curve with scipy's find_peaks (prominence ≥ `prominence`·max|i|).
- b-value: i_p = a·v^b, slope of log|i_p| against log v over the scan rates (b = 0.5 semi-infinite
  diffusion, b = 1 surface/capacitive; finite particles at slow rates also give b → 1).
- Dunn: at each potential, i/√v = k₁√v + k₂ by least squares over the rates; capacitive fraction of
  a rate = ∫|k₁ v| dV / ∫|i| dV. Needs ≥ 2 rates (3 for a check of the model).
- Randles–Sevcik (reversible, planar, semi-infinite): i_p = 2.69e5·n^{3/2}·A·C·D^{½}·v^{½}
  (A cm², C mol/cm³, D cm²/s). Only computed when b is within 0.5 ± 0.05 and the area and a
  concentration are given; otherwise None with the flag "randles_sevcik_not_applicable".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.signal import find_peaks

from .base import Event, MetricRow, column


@dataclass
class CvSettings:
    bin_width: float = 1e-3  # V
    vertex_hysteresis: float = 2e-3  # V
    prominence: float = 0.05
    match_window: float = 0.15  # V, peaks of different rates belong together within this distance
    area_cm2: float | None = None
    concentration_mol_cm3: float | None = None  # Δc of the insertion reaction over the peak
    electrons: int = 1


def split_branches(v: np.ndarray, hysteresis: float) -> list[tuple[int, int, int]]:
    """(start, stop, direction) of each monotone branch; direction +1 rising, −1 falling.

    Candidate vertices are the local extrema of v (vectorised); a vertex is confirmed once the
    potential has moved back from it by more than `hysteresis` (peakdet), so noise makes none."""
    if v.size < 2:
        return []
    d = np.sign(np.diff(v))
    nz = np.flatnonzero(d)
    if nz.size == 0:
        return []
    turns = nz[1:][d[nz[1:]] != d[nz[:-1]]]  # index of the first step in a new direction
    cand = np.r_[0, turns, v.size - 1]  # local extrema (start of each monotone run) and the end
    out = []
    start, direction, ext = 0, 0, 0
    for k in cand[1:]:
        if direction == 0:
            if abs(v[k] - v[0]) > hysteresis:
                direction, ext = (1 if v[k] > v[0] else -1), k
            continue
        if direction * (v[k] - v[ext]) >= 0:
            ext = k  # a new extreme in the current direction
        elif direction * (v[ext] - v[k]) > hysteresis:  # turned back by more than the hysteresis
            out.append((start, ext + 1, direction))
            start, direction, ext = ext, -direction, k
    if direction != 0:
        out.append((start, v.size, direction))
    return out


class CvOperator:
    """"cv" rows: one per branch (record "branch": peaks, charge) at the end of each CV step, and a
    "kinetics" row (b-values, E_p vs log v, Dunn, Randles–Sevcik) whenever a new scan rate has been
    added and ≥ 2 rates are known."""

    kind = "cv"

    def __init__(self, settings: CvSettings | None = None) -> None:
        self.s = settings or CvSettings()
        self._open = False
        self._buf: list[tuple[np.ndarray, ...]] = []
        self._rate: float | None = None
        self._meta: dict = {}
        self.curves: dict[tuple[float, int], tuple[np.ndarray, ...]] = {}  # (rate, dir) -> (bin, E, i)
        self.peaks: dict[float, list[dict]] = {}

    def feed_event(self, event: Event) -> list[MetricRow]:
        out = []
        if event.kind == "step_start":
            if self._open:
                out = self._finish()
            if event.data.get("technique") == "cv" or event.data.get("step_type") == "CV_SWEEP":
                self._open, self._buf = True, []
                self._rate = event.data.get("scan_rate_volt_per_second")
                self._meta = {"cycle_count": event.cycle_count, "step_count": event.step_count}
        elif event.kind in ("step_end", "run_end", "stop", "abort", "fault") and self._open:
            out = self._finish()
        return out

    def feed_samples(self, rows: Mapping[str, np.ndarray]) -> list[MetricRow]:
        if not self._open or len(rows["test_time_second"]) == 0:
            return []
        t, v, i = (column(rows, c) for c in ("test_time_second", "voltage_volt", "current_ampere"))
        ok = np.isfinite(v) & np.isfinite(i)
        self._buf.append((t[ok], v[ok], i[ok]))
        return []

    def _finish(self) -> list[MetricRow]:
        self._open = False
        if not self._buf:
            return []
        t, v, i = (np.concatenate([b[k] for b in self._buf]) for k in range(3))
        self._buf = []
        if t.size < 10:
            return []
        rate = self._rate
        if not rate:
            rate = float(np.median(np.abs(np.diff(v) / np.diff(t))[np.diff(t) > 0]))
        rate = float(rate)
        out: list[MetricRow] = []
        branch_peaks = []
        w = self.s.bin_width
        for n, (a, b, d) in enumerate(split_branches(v, self.s.vertex_hysteresis)):
            vb, ib, tb = v[a:b], i[a:b], t[a:b]
            if vb.size < 5:
                continue
            k = np.floor(vb / w).astype(np.int64)
            k0 = int(k.min())
            cnt = np.bincount(k - k0)
            s = np.bincount(k - k0, weights=ib)
            have = cnt > 0
            keys = np.arange(cnt.size)[have] + k0
            grid = np.bincount(k - k0, weights=vb)[have] / cnt[have]  # mean potential in each bin
            mean_i = s[have] / cnt[have]
            sig = d * mean_i  # anodic peaks are maxima of i, cathodic peaks minima
            pk, props = find_peaks(sig, prominence=self.s.prominence * max(float(np.abs(mean_i).max()), 1e-30))
            peaks = [{"potential_volt": float(grid[p]), "current_ampere": float(mean_i[p]),
                      "prominence_ampere": float(pr)} for p, pr in zip(pk, props["prominences"], strict=True)]
            direction = "anodic" if d > 0 else "cathodic"
            self.curves[(rate, d)] = (keys, grid, mean_i)
            branch_peaks.append((direction, peaks))
            charge = float(np.sum(0.5 * (ib[1:] + ib[:-1]) * np.diff(tb)))
            out.append(MetricRow("cv", {**self._meta, "record": "branch", "test_time_second": float(tb[-1]),
                                         "scan_rate_volt_per_second": rate, "branch_index": n,
                                         "direction": direction, "charge_c": charge,
                                         "potential_min_volt": float(vb.min()), "potential_max_volt": float(vb.max()),
                                         "peaks": peaks}))
        # the last branch of each direction stands for this rate
        last: dict[str, list[dict]] = {}
        for direction, peaks in branch_peaks:
            last[direction] = peaks
        self.peaks[rate] = [{**p, "direction": dr} for dr, ps in last.items() for p in ps]
        if len(self.peaks) >= 2:
            out.append(self._kinetics(float(t[-1])))
        return out

    def _kinetics(self, t_end: float) -> MetricRow:
        rates = sorted(self.peaks)
        groups: list[dict] = []
        for direction in ("anodic", "cathodic"):
            ref = [p for p in self.peaks[rates[0]] if p["direction"] == direction]
            for p0 in ref:
                pts = []
                for r in rates:
                    cand = [p for p in self.peaks[r] if p["direction"] == direction
                            and abs(p["potential_volt"] - p0["potential_volt"]) <= self.s.match_window]
                    if cand:
                        q = min(cand, key=lambda p: abs(p["potential_volt"] - p0["potential_volt"]))
                        pts.append((r, q["potential_volt"], q["current_ampere"]))
                if len(pts) < 2:
                    continue
                rv = np.array([p[0] for p in pts])
                ep = np.array([p[1] for p in pts])
                ip = np.abs(np.array([p[2] for p in pts]))
                b, _ = np.polyfit(np.log10(rv), np.log10(ip), 1)
                dep, _ = np.polyfit(np.log10(rv), ep, 1)
                g = {"direction": direction, "potential_volt": p0["potential_volt"], "scan_rates_volt_per_second": rv,
                     "peak_potentials_volt": ep, "peak_currents_ampere": ip, "b_value": float(b),
                     "peak_shift_volt_per_decade": float(dep), "flags": []}
                s = self.s
                if abs(b - 0.5) <= 0.05 and s.area_cm2 and s.concentration_mol_cm3:
                    slope = float(np.sum(ip * np.sqrt(rv)) / np.sum(rv))  # i_p = m √v through the origin
                    g["randles_sevcik_diffusion_coefficient_cm2_s"] = (
                        slope / (2.69e5 * s.electrons**1.5 * s.area_cm2 * s.concentration_mol_cm3)) ** 2
                else:
                    g["randles_sevcik_diffusion_coefficient_cm2_s"] = None
                    g["flags"].append("randles_sevcik_not_applicable")
                groups.append(g)
        return MetricRow("cv", {"record": "kinetics", "test_time_second": t_end, "scan_rates_volt_per_second": rates,
                                "peaks": groups, "dunn": self.dunn()})

    def dunn(self) -> list[dict]:
        """k₁, k₂ per potential and the capacitive fraction per rate and direction."""
        out = []
        for d, name in ((1, "anodic"), (-1, "cathodic")):
            rates = sorted(r for (r, dd) in self.curves if dd == d)
            if len(rates) < 2:
                continue
            keys = [self.curves[(r, d)][0] for r in rates]
            common = keys[0]
            for k in keys[1:]:
                common = np.intersect1d(common, k)
            if common.size < 3:
                continue
            idx = [np.searchsorted(k, common) for k in keys]
            cur = np.array([self.curves[(r, d)][2][j] for r, j in zip(rates, idx, strict=True)])
            pot = np.mean([self.curves[(r, d)][1][j] for r, j in zip(rates, idx, strict=True)], axis=0)
            sv = np.sqrt(np.array(rates))[:, None]
            y = cur / sv  # i/√v = k1 √v + k2
            a = np.column_stack([np.sqrt(rates), np.ones(len(rates))])
            coef, *_ = np.linalg.lstsq(a, y, rcond=None)
            k1, k2 = coef
            frac = []
            for n, r in enumerate(rates):
                tot = float(np.abs(cur[n]).sum())
                frac.append(float(np.abs(k1 * r).sum()) / tot if tot > 0 else math.nan)
            out.append({"direction": name, "potential_volt": pot, "k1_farad": k1, "k2_ampere_s_half_v_half": k2,
                        "scan_rates_volt_per_second": rates, "capacitive_fraction": frac})
        return out
