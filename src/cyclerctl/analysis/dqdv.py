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
from numba import njit
from scipy.ndimage import correlate1d, gaussian_filter1d
from scipy.signal import find_peaks

from .base import Event, MetricRow, column

INCLUDED_TECHNIQUES = frozenset({"gcd", "cccv", ""})


_NONE = np.empty(0)


@njit(cache=True, nogil=True)
def _intervals(t, v, i, sc, cyc, pt, pv, pi, ps, excluded):  # pragma: no cover - compiled
    """The sample intervals of a block that carry charge: interval k runs from sample k-1 (the
    previous block's last for k = 0: pt, pv, pi, ps) to sample k within one step, with finite
    voltages and ΔQ = ½(I_k + I_{k-1})Δt finite and non-zero, in a step not in `excluded` (sorted).
    Returns their sample indices, start voltages, |ΔQ|, and the runs of one direction (0 discharge,
    1 charge) and cycle: the index into the intervals where each run starts, its direction, its cycle."""
    n = t.shape[0]
    idx = np.empty(n, np.int64)
    v0 = np.empty(n)
    dqa = np.empty(n)
    starts = np.empty(n, np.int64)
    dirs = np.empty(n, np.int64)
    cycles = np.empty(n, np.int64)
    m = 0
    runs = 0
    last_key = -1
    ta, va, ia, sa = pt, pv, pi, ps
    for k in range(n):
        tb, vb, ib, sb = t[k], v[k], i[k], sc[k]
        dq = 0.5 * (ib + ia) * (tb - ta)
        ok = sa == sb and np.isfinite(dq) and np.isfinite(vb) and np.isfinite(va) and dq != 0.0
        if ok and excluded.shape[0] > 0:
            j = np.searchsorted(excluded, sb)
            ok = not (j < excluded.shape[0] and excluded[j] == sb)
        if ok:
            d = 0 if dq < 0 else 1
            c = np.int64(cyc[k]) if np.isfinite(cyc[k]) else np.int64(1)
            key = d * 1_000_000_000 + c
            if key != last_key:
                starts[runs] = m
                dirs[runs] = d
                cycles[runs] = c
                runs += 1
                last_key = key
            idx[m] = k
            v0[m] = va
            dqa[m] = abs(dq)
            m += 1
        ta, va, ia, sa = tb, vb, ib, sb
    return idx[:m], v0[:m], dqa[:m], starts[:runs], dirs[:runs], cycles[:runs]


@njit(cache=True, nogil=True)
def _spread(va, vb, q, bins, v_min, width):  # pragma: no cover - compiled
    """Add each interval's charge q[m] (moving from va[m] to vb[m]) to the bins it crosses, in
    proportion to the overlap (in bin units; what falls outside the bins is dropped, what lands on one
    clipped edge bin stays there). Returns (total charge, lowest voltage, highest voltage)."""
    n = bins.shape[0]
    qs, lo, hi = 0.0, np.inf, -np.inf
    for m in range(va.shape[0]):
        a, b, w = va[m], vb[m], q[m]
        if a > b:
            a, b = b, a
        qs += w
        lo = min(lo, a)
        hi = max(hi, b)
        x0 = (a - v_min) / width
        x1 = (b - v_min) / width
        k0 = min(max(int(np.floor(x0)), 0), n - 1)
        k1 = min(max(int(np.floor(x1)), 0), n - 1)
        if k0 == k1:
            bins[k0] += w
        else:
            for k in range(k0, k1 + 1):
                bins[k] += w * (min(x1, k + 1.0) - max(x0, float(k))) / (x1 - x0)
    return qs, lo, hi


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
        self._weights: np.ndarray | None = None  # the smoothing kernel (_kernel)

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
        if self._excluded and (sc[0] in self._excluded or sc[-1] in self._excluded or sc[0] != sc[-1]):
            excluded = np.array(sorted(self._excluded), dtype=np.float64)
        else:
            excluded = _NONE
        f64 = np.float64
        idx, v0, dqa, starts, dirs, cycles = _intervals(
            np.ascontiguousarray(t, dtype=f64), np.ascontiguousarray(v, dtype=f64),
            np.ascontiguousarray(i, dtype=f64), np.ascontiguousarray(sc, dtype=f64),
            np.ascontiguousarray(cyc, dtype=f64), float(prev[0]), float(prev[1]), float(prev[2]), float(prev[3]),
            excluded)
        if idx.size == 0:
            return []
        out: list[MetricRow] = []
        bounds = [*starts.tolist(), idx.size]
        for s_, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            d = "discharge" if dirs[s_] == 0 else "charge"
            c = int(cycles[s_])
            if (d, c) != (self._dir, self._cycle):
                out += self._close()
                self._reset(d, c)
            if a == 0 and b == idx.size:
                self._accumulate(v0, v[idx], dqa)
            else:
                self._accumulate(v0[a:b], v[idx[a:b]], dqa[a:b])
            self._t_end = float(t[idx[b - 1]])
        return out

    def _accumulate(self, va: np.ndarray, vb: np.ndarray, q: np.ndarray) -> None:
        qs, lo, hi = _spread(np.ascontiguousarray(va, dtype=np.float64), np.ascontiguousarray(vb, dtype=np.float64),
                             np.ascontiguousarray(q, dtype=np.float64), self._bins, self.v_min, self.width)
        self._q += qs
        self._lo, self._hi = min(self._lo, lo), max(self._hi, hi)

    # ---- read-out ----------------------------------------------------------------------------------

    def bin_charge(self) -> np.ndarray:
        """Charge (C) in each voltage bin of the open half cycle."""
        return self._bins.copy()

    def _close(self, final: bool = False) -> list[MetricRow]:
        if self._dir is None or self._q <= 0 or not np.isfinite(self._lo):
            self._reset(None, None)
            return []
        scale = 1 / 3.6 / (self.active_mass * 1e3) if self.active_mass else 1 / 3.6  # C -> mAh(/g)
        sigma = self.fwhm / (2 * np.sqrt(2 * np.log(2))) / self.width
        margin = int(4 * sigma) + 2  # keep the smoothed tails: the area stays the half cycle's capacity
        k0 = max(0, int((self._lo - self.v_min) / self.width) - margin)
        k1 = min(self.n, int((self._hi - self.v_min) / self.width) + margin)
        # every bin holding charge lies inside [k0, k1) with `margin` empty bins on each side, so
        # smoothing only that window (zeros beyond it) gives the same numbers at a fraction of the cost
        dqdv = self._bins[k0:k1] / self.width * scale
        smooth = correlate1d(dqdv, self._kernel(sigma), mode="constant")  # = gaussian_filter1d(dqdv, sigma)
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

    def _kernel(self, sigma: float) -> np.ndarray:
        """gaussian_filter1d's weights for `sigma` (its response to a unit impulse: the same numbers,
        computed once instead of at every half cycle)."""
        if self._weights is None:
            radius = int(4.0 * sigma + 0.5)  # gaussian_filter1d's default truncate = 4
            impulse = np.zeros(2 * radius + 1)
            impulse[radius] = 1.0
            self._weights = gaussian_filter1d(impulse, sigma, mode="constant")
        return self._weights

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
