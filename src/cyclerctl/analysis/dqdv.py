"""Differential capacity dQ/dV per half cycle, by streaming voltage-bin accumulation.

Each sample interval carries charge ΔQ = ½(I_k + I_{k-1})Δt while the voltage moves from V_{k-1} to
V_k; the charge is spread uniformly over that voltage span (exact for a linear V(t) inside the
interval), so sparse records (e.g. every 5 mV) give no comb artefacts: each interval adds to every
bin it crosses its share of the overlap (O(bins crossed) per sample, bounded memory).
At the end of a half cycle the bin charges are divided by the bin width and smoothed with a Gaussian
(FWHM 10 mV by default, as cellpy); peaks are located with scipy's find_peaks and tracked across
cycles (a peak keeps its id while it moves less than `track_window` from one cycle to the next).
Only galvanostatic cycling steps (gcd, cccv) count; GITT, ICI, CV and EIS steps do not.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from .base import Event, MetricRow, column

INCLUDED_TECHNIQUES = frozenset({"gcd", "cccv", ""})


def _shift(a: np.ndarray, first: float) -> np.ndarray:
    """a delayed by one sample, `first` in front (the previous block's last value)."""
    out = np.empty_like(a)
    out[0] = first
    out[1:] = a[:-1]
    return out


def keeps_curve(cycle: int | None) -> bool:
    """Cycles whose whole dQ/dV curve is kept: 1-10, then 1, 2 and 5 times each power of ten
    (20, 50, 100, 200, 500, ...). Every half cycle still gets its capacity and peak rows; a
    12,000-cycle test then stores ~40 curves instead of 24,000 (each curve is ~1,000 bins)."""
    if cycle is None or cycle <= 10:
        return True
    mag = 10 ** (len(str(cycle)) - 1)
    return cycle % mag == 0 and cycle // mag in (1, 2, 5)


class DqdvOperator:
    kind = "dqdv"

    def __init__(self, active_mass: float | None = None, bin_width: float = 2e-3,
                 v_min: float = -0.2, v_max: float = 5.0, fwhm: float = 0.010,
                 prominence: float = 0.05, track_window: float = 0.03) -> None:
        self.active_mass = active_mass
        self.width = bin_width
        self.v_min = v_min
        self.n = int(round((v_max - v_min) / bin_width))
        self.edges = v_min + bin_width * np.arange(self.n + 1)
        self.fwhm = fwhm
        self.prominence = prominence
        self.track_window = track_window
        self._excluded: set[float] = set()  # step counts of steps that do not count
        self._prev: tuple[float, float, float, float] | None = None
        self._reset(None, None)
        self._tracks: dict[str, list[dict]] = {"discharge": [], "charge": []}
        self._next_peak_id = 0

    def _reset(self, direction: str | None, cycle: int | None) -> None:
        self._dir = direction
        self._cycle = cycle
        self._bins = np.zeros(self.n)  # charge (C) in each voltage bin
        self._q = 0.0
        self._t_end = None
        self._lo, self._hi = np.inf, -np.inf

    # ---- streaming -------------------------------------------------------------------------------

    def feed_event(self, event: Event) -> list[MetricRow]:
        if event.kind == "step_start" and event.step_count is not None:
            tech = str(event.data.get("technique") or "")
            if tech not in INCLUDED_TECHNIQUES:
                self._excluded.add(float(event.step_count))
            return []
        if event.kind == "run_end":
            return self._close(final=True)
        return []

    def feed_samples(self, rows: Mapping[str, np.ndarray]) -> list[MetricRow]:
        t = column(rows, "test_time_second")
        if t.size == 0:
            return []
        v, i = column(rows, "voltage_volt"), column(rows, "current_ampere")
        sc, cyc = column(rows, "step_count"), column(rows, "cycle_count")
        prev = self._prev if self._prev is not None else (np.nan, np.nan, np.nan, np.nan)
        self._prev = (t[-1], v[-1], i[-1], sc[-1])
        if sc[0] == sc[-1] and sc[0] in self._excluded:
            return []  # the block is one step that does not count (CV, EIS, GITT, ICI, ...)
        t0, v0, i0, s0 = (_shift(a, prev[k]) for k, a in enumerate((t, v, i, sc)))
        dq = 0.5 * (i + i0) * (t - t0)
        ok = (s0 == sc) & np.isfinite(dq) & np.isfinite(v) & np.isfinite(v0) & (dq != 0)
        if self._excluded and (sc[0] in self._excluded or sc[-1] in self._excluded or sc[0] != sc[-1]):
            ok &= ~np.isin(sc, list(self._excluded))
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            return []
        direction = np.where(dq[idx] < 0, 0, 1)  # 0 discharge, 1 charge
        cyc_i = np.where(np.isfinite(cyc[idx]), cyc[idx], 1).astype(np.int64)
        key = direction * 1_000_000_000 + cyc_i
        cut = np.concatenate(([0], np.flatnonzero(np.diff(key)) + 1, [idx.size]))
        out: list[MetricRow] = []
        for a, b in zip(cut[:-1], cut[1:], strict=True):
            d = "discharge" if direction[a] == 0 else "charge"
            c = int(cyc_i[a])
            if (d, c) != (self._dir, self._cycle):
                out += self._close()
                self._reset(d, c)
            j = idx[a:b]
            self._accumulate(v0[j], v[j], np.abs(dq[j]))
            self._t_end = float(t[j[-1]])
        return out

    def _accumulate(self, va: np.ndarray, vb: np.ndarray, q: np.ndarray) -> None:
        lo, hi = np.minimum(va, vb), np.maximum(va, vb)
        self._q += float(q.sum())
        self._lo, self._hi = min(self._lo, float(lo.min())), max(self._hi, float(hi.max()))
        x0, x1 = (lo - self.v_min) / self.width, (hi - self.v_min) / self.width  # in bin units
        k0 = np.clip(np.floor(x0).astype(np.int64), 0, self.n - 1)
        k1 = np.clip(np.floor(x1).astype(np.int64), 0, self.n - 1)
        span = k1 - k0 + 1
        one = span == 1
        if one.any():
            self._bins += np.bincount(k0[one], weights=q[one], minlength=self.n)
        many = ~one
        if many.any():  # spread over every bin the interval crosses, in proportion to the overlap
            j = np.repeat(np.flatnonzero(many), span[many])
            offs = np.arange(j.size) - np.repeat(np.cumsum(span[many]) - span[many], span[many])
            k = k0[j] + offs
            overlap = np.minimum(x1[j], k + 1.0) - np.maximum(x0[j], k.astype(np.float64))
            w = q[j] * overlap / (x1[j] - x0[j])
            self._bins += np.bincount(k, weights=w, minlength=self.n)

    # ---- read-out ----------------------------------------------------------------------------------

    def bin_charge(self) -> np.ndarray:
        """Charge (C) in each voltage bin of the open half cycle."""
        return self._bins.copy()

    def _close(self, final: bool = False) -> list[MetricRow]:
        if self._dir is None or self._q <= 0 or not np.isfinite(self._lo):
            self._reset(None, None)
            return []
        q_bins = self.bin_charge()
        scale = 1 / 3.6 / (self.active_mass * 1e3) if self.active_mass else 1 / 3.6  # C -> mAh(/g)
        dqdv = q_bins / self.width * scale
        sigma = self.fwhm / (2 * np.sqrt(2 * np.log(2))) / self.width
        margin = int(4 * sigma) + 2  # keep the smoothed tails: the area stays the half cycle's capacity
        k0 = max(0, int((self._lo - self.v_min) / self.width) - margin)
        k1 = min(self.n, int((self._hi - self.v_min) / self.width) + margin)
        # every bin holding charge lies inside [k0, k1) with `margin` empty bins on each side, so
        # smoothing only that window (zeros beyond it) gives the same numbers at a fraction of the cost
        smooth = gaussian_filter1d(dqdv[k0:k1], sigma, mode="constant")
        volts = 0.5 * (self.edges[k0:k1] + self.edges[k0 + 1:k1 + 1])
        peaks = self._peaks(volts, smooth)
        unit = "mah_g_v" if self.active_mass else "mah_v"
        curve = final or keeps_curve(self._cycle)
        row = MetricRow("dqdv", {
            "cycle_count": self._cycle,
            "test_time_second": self._t_end,
            "direction": self._dir,
            "capacity_ah": self._q / 3600.0,
            "bin_width_volt": self.width,
            "voltage_volt": volts if curve else None,
            f"dqdv_{unit}": smooth if curve else None,
            "peaks": peaks,
        })
        self._reset(None, None)
        return [row]

    def _peaks(self, volts: np.ndarray, y: np.ndarray) -> list[dict]:
        if y.size < 3 or not np.any(y > 0):
            return []
        idx, props = find_peaks(y, prominence=self.prominence * float(y.max()))
        prev = self._tracks[self._dir]
        used: set[int] = set()
        peaks = []
        for k, prom in zip(idx, props["prominences"], strict=True):
            ids = [p for p in prev if p["id"] not in used and abs(p["voltage_volt"] - volts[k]) <= self.track_window]
            if ids:
                pid = min(ids, key=lambda p: abs(p["voltage_volt"] - volts[k]))["id"]
            else:
                pid = self._next_peak_id
                self._next_peak_id += 1
            used.add(pid)
            peaks.append({"id": pid, "voltage_volt": float(volts[k]), "height": float(y[k]),
                          "prominence": float(prom)})
        self._tracks[self._dir] = peaks
        return peaks
