"""Differential capacity dQ/dV per half cycle, by streaming voltage-bin accumulation.

Each sample interval carries charge ΔQ = ½(I_k + I_{k-1})Δt while the voltage moves from V_{k-1} to
V_k; the charge is spread uniformly over that voltage span (exact for a linear V(t) inside the
interval), so sparse records (e.g. every 5 mV) give no comb artefacts: each interval adds to every
bin it crosses its share of the overlap (O(bins crossed) per sample, bounded memory).
At the end of a half cycle the bin charges are divided by the bin width and smoothed with a Gaussian
(FWHM 10 mV by default, as cellpy); peaks are located as scipy.signal.find_peaks(y, prominence=p)
defines them (one compiled pass with the smoothing) and tracked across cycles (a peak keeps its id
while it moves less than `track_window` from one cycle to the next).
Only galvanostatic cycling steps (gcd, cccv) count; GITT, ICI, CV and EIS steps do not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numba import njit
from scipy.ndimage import gaussian_filter1d

from .base import Event, MetricRow, column

INCLUDED_TECHNIQUES = frozenset({"gcd", "cccv", ""})


_NONE = np.empty(0)


@njit(cache=True, nogil=True, error_model="numpy")
def _spread(bins, a, b, w, v_min, width):  # pragma: no cover - compiled
    """Add charge w, moving from voltage a to b (a ≤ b), to the bins it crosses in proportion to the
    overlap (in bin units; what falls outside the bins is dropped, what lands on one clipped edge bin
    stays there)."""
    nb = bins.shape[0]
    x0 = (a - v_min) / width
    x1 = (b - v_min) / width
    k0 = min(max(int(np.floor(x0)), 0), nb - 1)
    k1 = min(max(int(np.floor(x1)), 0), nb - 1)
    if k0 == k1:
        bins[k0] += w
    else:
        for k in range(k0, k1 + 1):
            bins[k] += w * (min(x1, k + 1.0) - max(x0, float(k))) / (x1 - x0)


@njit(cache=True, nogil=True, error_model="numpy")
def _feed(t, v, i, sc, cyc, start, pt, pv, pi, ps, excluded, cur_d, cur_c, bins, spare, v_min,
          width):  # pragma: no cover - compiled
    """The block's sample intervals that carry charge, spread into the bins as they are found, from
    sample `start` (its previous sample: the block's sample start-1, or pt, pv, pi, ps for start = 0).
    Interval k runs from sample k-1 to sample k within one step, with finite voltages and
    ΔQ = ½(I_k + I_{k-1})Δt finite and non-zero, in a step not in `excluded` (sorted); its direction
    is 0 (discharge, ΔQ < 0) or 1, its cycle cyc[k] (1 if NaN).
    Intervals of the open half cycle (direction cur_d, -1 for none; cycle cur_c) go into `bins`; at the
    first interval of another half cycle the next ones go into `spare` (zeros) until a third begins.
    Returns (where it stopped: the third's first interval or n; the second's direction (-1 if none)
    and cycle; then for each of the two: intervals spread, their total |ΔQ|, lowest and highest
    voltage, time of the last one)."""
    n = t.shape[0]
    if start == 0:
        ta, va, ia, sa = pt, pv, pi, ps
    else:
        ta, va, ia, sa = t[start - 1], v[start - 1], i[start - 1], sc[start - 1]
    m, qs, lo, hi, t_end = 0, 0.0, np.inf, -np.inf, np.nan
    m2, qs2, lo2, hi2, t_end2 = 0, 0.0, np.inf, -np.inf, np.nan
    d_next, c_next = -1, np.int64(0)
    for k in range(start, n):
        tb, vb, ib, sb = t[k], v[k], i[k], sc[k]
        dq = 0.5 * (ib + ia) * (tb - ta)
        ok = sa == sb and np.isfinite(dq) and np.isfinite(vb) and np.isfinite(va) and dq != 0.0
        if ok and excluded.shape[0] > 0:
            j = np.searchsorted(excluded, sb)
            ok = not (j < excluded.shape[0] and excluded[j] == sb)
        if ok:
            d = 0 if dq < 0 else 1
            c = np.int64(cyc[k]) if np.isfinite(cyc[k]) else np.int64(1)
            if d != cur_d or c != cur_c:
                if d_next >= 0:
                    return k, d_next, c_next, m, qs, lo, hi, t_end, m2, qs2, lo2, hi2, t_end2
                d_next, c_next = d, c
                cur_d, cur_c = d, c
            a, b, w = va, vb, abs(dq)
            if a > b:
                a, b = b, a
            if d_next < 0:
                _spread(bins, a, b, w, v_min, width)
                qs += w
                lo, hi, t_end = min(lo, a), max(hi, b), tb
                m += 1
            else:
                _spread(spare, a, b, w, v_min, width)
                qs2 += w
                lo2, hi2, t_end2 = min(lo2, a), max(hi2, b), tb
                m2 += 1
        ta, va, ia, sa = tb, vb, ib, sb
    return n, d_next, c_next, m, qs, lo, hi, t_end, m2, qs2, lo2, hi2, t_end2


@njit(cache=True, nogil=True, error_model="numpy")
def smooth(x, w, width=1.0, scale=1.0):  # pragma: no cover - compiled
    """correlate1d(x / width * scale, w, mode="constant") for an odd, symmetric w, summed in the order
    scipy.ndimage sums it (each output: the centre term, then the pairs from the outermost in): the
    same numbers."""
    n, r = x.shape[0], w.shape[0] // 2
    xp = np.zeros(n + 2 * r)  # x / width * scale with r zeros on each side (mode="constant", cval 0)
    for k in range(n):
        xp[r + k] = x[k] / width * scale
    y = np.empty(n)
    for k in range(n):
        y[k] = xp[r + k] * w[r]
    for j in range(-r, 0):  # one pair of taps over the whole line at a time (the order of each sum kept)
        wj = w[r + j]
        a = xp[r + j:r + j + n]
        b = xp[r - j:r - j + n]
        for k in range(n):  # (views, so that the loop vectorizes)
            y[k] += (a[k] + b[k]) * wj
    return y


@njit(cache=True, nogil=True, error_model="numpy")
def find_peaks_prominence(y, p):  # pragma: no cover - compiled
    """The peaks of scipy.signal.find_peaks(y, prominence=p) for a finite y: local maxima (a flat top
    counts once, at its middle sample, rounded down; never the first or last sample) whose prominence
    is ≥ p. The prominence is the height above the higher of the two bases, each base the lowest
    sample between the peak and the nearest strictly higher sample on that side (or that end of y).
    Returns (peak indices, prominences), in increasing index.

    Both sides are walked in step; a peak is dropped as soon as one finished side shows top − base < p
    (its prominence can only be smaller), and the other side stops once its minimum is at or below the
    finished side's (the higher base is then known): the kept peaks and their prominences are
    scipy's to the bit."""
    lowest = np.inf
    for k in range(y.shape[0]):
        if y[k] < lowest:
            lowest = y[k]
    return _peaks_above(y, p, lowest)


@njit(cache=True, nogil=True, error_model="numpy")
def _peaks_above(y, p, lowest):  # pragma: no cover - compiled
    """find_peaks_prominence, given the lowest sample of y: a peak with top − lowest < p is dropped
    without walking its sides (no base lies below the lowest sample)."""
    n = y.shape[0]
    idx = np.empty(max(n // 2, 1), np.int64)
    prom = np.empty(max(n // 2, 1))
    m = 0
    i = 1
    while i < n - 1:
        if y[i - 1] < y[i]:
            ahead = i + 1
            while ahead < n - 1 and y[ahead] == y[i]:
                ahead += 1
            if y[ahead] < y[i]:
                peak = (i + ahead - 1) // 2
                top = y[peak]
                if top - lowest < p:
                    i = ahead + 1
                    continue
                lm, rm = top, top
                lj, rj = peak - 1, peak + 1
                lopen, ropen = True, True
                while lopen and ropen:
                    if lj >= 0 and y[lj] <= top:
                        if y[lj] < lm:
                            lm = y[lj]
                        lj -= 1
                    else:
                        lopen = False
                    if rj < n and y[rj] <= top:
                        if y[rj] < rm:
                            rm = y[rj]
                        rj += 1
                    else:
                        ropen = False
                keep = True
                if lopen:  # the right side is finished
                    if top - rm < p:
                        keep = False
                    else:
                        while lj >= 0 and y[lj] <= top and lm > rm:
                            if y[lj] < lm:
                                lm = y[lj]
                            lj -= 1
                elif ropen:  # the left side is finished
                    if top - lm < p:
                        keep = False
                    else:
                        while rj < n and y[rj] <= top and rm > lm:
                            if y[rj] < rm:
                                rm = y[rj]
                            rj += 1
                if keep:
                    pr = top - max(lm, rm)
                    if p <= pr:
                        idx[m] = peak
                        prom[m] = pr
                        m += 1
                i = ahead
        i += 1
    return idx[:m], prom[:m]


@njit(cache=True, nogil=True, error_model="numpy")
def _close_window(bins, lo, hi, v_min, width, margin, scale, w, edges, prominence, prev_v, prev_id, window,
                  next_id, curve):  # pragma: no cover - compiled
    """The close of a half cycle whose charge lies between voltages lo and hi: dQ/dV (bins / width ·
    scale) on the bins of [lo, hi] and `margin` more on each side, smoothed by w; its peaks
    (find_peaks_prominence with p = prominence · max; none on fewer than 3 bins or without a positive
    value), each with the id of the nearest unclaimed peak of the previous half cycle (voltages prev_v,
    ids prev_id) within `window`, else the next new id. Returns (smoothed curve, bin-centre voltages
    (empty unless `curve`), peaks as rows (voltage, height, prominence), their ids, the next new id,
    whether peaks were searched for: if not, the previous half cycle's peaks stay the ones to track)."""
    k0 = max(0, int((lo - v_min) / width) - margin)
    k1 = min(bins.shape[0], int((hi - v_min) / width) + margin)
    # every bin holding charge lies inside [k0, k1) with `margin` empty bins on each side, so
    # smoothing only that window (zeros beyond it) gives the same numbers at a fraction of the cost
    y = smooth(bins[k0:k1], w, width, scale)
    n = y.shape[0]
    volts = np.empty(n if curve else 0)
    for k in range(volts.shape[0]):
        volts[k] = 0.5 * (edges[k0 + k] + edges[k0 + k + 1])
    top, lowest = -np.inf, np.inf
    positive = False
    for k in range(n):
        if y[k] > top or np.isnan(y[k]):
            top = y[k]
        if y[k] < lowest:
            lowest = y[k]
        positive = positive or y[k] > 0
    if n < 3 or not positive:
        return y, volts, np.empty((3, 0)), np.empty(0, np.int64), next_id, False
    idx, prom = _peaks_above(y, prominence * top, lowest)
    m = idx.shape[0]
    peaks = np.empty((3, m))
    ids = np.empty(m, np.int64)
    used = np.zeros(prev_v.shape[0], np.bool_)
    for a in range(m):
        vk = 0.5 * (edges[k0 + idx[a]] + edges[k0 + idx[a] + 1])
        peaks[0, a] = vk
        peaks[1, a] = y[idx[a]]
        peaks[2, a] = prom[a]
        best, best_d = -1, np.inf
        for j in range(prev_v.shape[0]):  # the first of the nearest on a tie
            d = abs(prev_v[j] - vk)
            if not used[j] and d <= window and d < best_d:
                best, best_d = j, d
        if best >= 0:
            used[best] = True
            ids[a] = prev_id[best]
        else:
            ids[a] = next_id
            next_id += 1
    return y, volts, peaks, ids, next_id, True


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
        self._spare = np.zeros(self.n)  # zeros: the bins of the next half cycle while a block is spread
        self._reset(None, None)
        # the previous half cycle's peaks of each direction: voltages, ids
        self._tracks = {d: (np.empty(0), np.empty(0, np.int64)) for d in ("discharge", "charge")}
        self._next_peak_id = 0
        self._weights: np.ndarray | None = None  # the smoothing kernel (_kernel)
        self._smoothing: tuple[int, np.ndarray] | None = None  # window margin (bins), kernel

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
        if t.size == 1:
            return self._feed_one(float(t[0]), float(v[0]), float(i[0]), float(sc[0]), float(cyc[0]))
        prev = self._prev if self._prev is not None else (np.nan, np.nan, np.nan, np.nan)
        self._prev = (float(t[-1]), float(v[-1]), float(i[-1]), float(sc[-1]))
        s0, s1 = sc[0], sc[-1]
        if self._excluded:
            if s0 == s1 and s0 in self._excluded:
                return []  # the block is one step that does not count (CV, EIS, GITT, ICI, ...)
            if s0 in self._excluded or s1 in self._excluded or s0 != s1:
                excluded = np.array(sorted(self._excluded), dtype=np.float64)
            else:
                excluded = _NONE
        else:
            excluded = _NONE
        out: list[MetricRow] = []
        pos, n = 0, t.size
        pt, pv, pi, ps = prev
        cur_d = -1 if self._dir is None else (0 if self._dir == "discharge" else 1)
        cur_c = self._cycle if self._cycle is not None else 0
        while True:
            # the open half cycle's intervals, then the next half cycle's into the spare bins
            pos, d, c, m, qs, lo, hi, t_end, m2, qs2, lo2, hi2, t_end2 = _feed(
                t, v, i, sc, cyc, pos, pt, pv, pi, ps, excluded, cur_d, cur_c, self._bins, self._spare,
                self.v_min, self.width)
            if m:
                self._q += qs
                self._lo, self._hi = min(self._lo, lo), max(self._hi, hi)
                self._t_end = t_end
            if d < 0:
                return out
            out += self._close()
            self._bins, self._spare = self._spare, self._bins  # the close left fresh zeros
            self._dir, self._cycle = "discharge" if d == 0 else "charge", c
            if m2:
                self._q += qs2
                self._lo, self._hi = min(self._lo, lo2), max(self._hi, hi2)
                self._t_end = t_end2
            if pos >= n:
                return out
            cur_d, cur_c = d, c

    def _feed_one(self, t: float, v: float, i: float, sc: float, cyc: float) -> list[MetricRow]:
        """feed_samples for a block of one sample (real-time acquisition), on Python floats: the same
        interval rule, half-cycle change and bin spreading as _feed."""
        pt, pv, pi, ps = self._prev if self._prev is not None else (math.nan, math.nan, math.nan, math.nan)
        self._prev = (t, v, i, sc)
        if sc in self._excluded:
            return []
        dq = 0.5 * (i + pi) * (t - pt)
        if not (ps == sc and math.isfinite(dq) and math.isfinite(v) and math.isfinite(pv) and dq != 0.0):
            return []
        d = "discharge" if dq < 0 else "charge"
        c = int(cyc) if math.isfinite(cyc) else 1
        out: list[MetricRow] = []
        if d != self._dir or c != self._cycle:
            out = self._close()
            self._reset(d, c)
        a, b, w = (pv, v, abs(dq)) if pv <= v else (v, pv, abs(dq))
        bins, width = self._bins, self.width
        x0, x1 = (a - self.v_min) / width, (b - self.v_min) / width
        last = bins.shape[0] - 1
        k0, k1 = min(max(math.floor(x0), 0), last), min(max(math.floor(x1), 0), last)
        if k0 == k1:
            bins[k0] += w
        else:
            for k in range(k0, k1 + 1):
                bins[k] += w * (min(x1, k + 1.0) - max(x0, float(k))) / (x1 - x0)
        self._q += w
        self._lo, self._hi = min(self._lo, a), max(self._hi, b)
        self._t_end = t
        return out

    # ---- read-out ----------------------------------------------------------------------------------

    def bin_charge(self) -> np.ndarray:
        """Charge (C) in each voltage bin of the open half cycle."""
        return self._bins.copy()

    def _close(self, final: bool = False) -> list[MetricRow]:
        if self._dir is None or self._q <= 0 or not math.isfinite(self._lo):
            self._reset(None, None)
            return []
        scale = 1 / 3.6 / (self.active_mass * 1e3) if self.active_mass else 1 / 3.6  # C -> mAh(/g)
        if self._smoothing is None:  # computed once, as the kernel is
            sigma = self.fwhm / (2 * np.sqrt(2 * np.log(2))) / self.width
            margin = int(4 * sigma) + 2  # keep the smoothed tails: the area stays the half cycle's capacity
            self._smoothing = (margin, self._kernel(sigma))
        margin, weights = self._smoothing
        curve = final or keeps_curve(self._cycle)
        prev_v, prev_id = self._tracks[self._dir]
        y, volts, found, ids, self._next_peak_id, searched = _close_window(
            self._bins, self._lo, self._hi, self.v_min, self.width, margin, scale, weights, self.edges,
            self.prominence, prev_v, prev_id, self.track_window, self._next_peak_id, curve)
        if searched:
            self._tracks[self._dir] = (found[0], ids)
        v, h, p = found.tolist()
        unit = "mah_g_v" if self.active_mass else "mah_v"
        row = MetricRow("dqdv", {
            "cycle_count": self._cycle,
            "test_time_second": self._t_end,
            "direction": self._dir,
            "capacity_ah": self._q / 3600.0,
            "bin_width_volt": self.width,
            "voltage_volt": volts if curve else None,
            f"dqdv_{unit}": y if curve else None,
            "peaks": [{"id": i, "voltage_volt": vk, "height": hk, "prominence": pk}
                      for i, vk, hk, pk in zip(ids.tolist(), v, h, p, strict=True)],
        })
        self._reset(None, None)
        return [row]

    def _kernel(self, sigma: float) -> np.ndarray:
        """gaussian_filter1d's weights for `sigma` (its response to a unit impulse: the same numbers,
        computed once instead of at every half cycle)."""
        if self._weights is None:
            radius = int(4.0 * sigma + 0.5)  # gaussian_filter1d's default truncate = 4
            impulse = np.zeros(2 * radius + 1)
            impulse[radius] = 1.0
            self._weights = gaussian_filter1d(impulse, sigma, mode="constant")
        return self._weights
