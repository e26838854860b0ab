"""ICI per current interruption (Lacey; Chien et al., Nat. Commun. 14 (2023) 2289).

A slow constant current I is interrupted for a few seconds. After a current step long enough for a
pseudo-steady concentration profile, the particle's history carries on at the step's potential slope s
(the OCV slope in time, dE/dt = (dU/dx)·dx/dt), and the interruption adds the response to −I:

    E(t) = E(0⁺) + s·t − s·θ(t − t₀),   θ(t) = (τ_d/3)·h(t/τ_d)   (the GITT sphere function)

so the interruption is fitted with the exact constant-flux sphere solution, one nonlinear parameter
τ_d, and D = R_p²/τ_d (`diffusion_coefficient_cm2_s`). θ = (2/3)√(τ_d t/π) + t/3 + … at short times:
the classic form E = E_I − I·R + k√t with D = 4/(9π)·R_p²·(s/k)² is its first term; it is reported
beside it (`..._two_term_cm2_s`: E = a + k·(√t − t₀/(2√t)) + c·t; `..._one_term_cm2_s`: E = a + k√t).

- s is the tangent at the end of the current step (a parabola through its second half), not the
  mean slope of that half: the OCV curvature over 150 s of a 0.1C step reads the mean slope 2-3 % off.
- t₀ = 2·R_ct·C_dl is the delay of the diffusion response behind the interruption (the double layer
  discharges through R_ct). It is fitted (first order, as in GITT) and refined by refitting on the
  shifted times t − t₀: over a 1-10 s window t₀ ≈ 0.25 s is far from negligible (left out, D reads
  5-9 % low; two-term 17 % low).
Assumes a pseudo-steady profile at the interruption (a current step that follows an interruption,
or lasts ≥ τ_d/2), a constant D over the window and a window well after t₀ (t_min ≥ 2·t₀). Flags
say when the data break them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .base import Event, MetricRow, column
from .diffusion import SphereFit, fit_sqrt, fit_two_term, sqrt_t_diffusion

M2_TO_CM2 = 1e4


@dataclass
class IciSettings:
    particle_radius: float | None = None  # m
    t_min: float = 1.0  # s, first time of the interruption used by the fits
    t_max: float = 10.0  # s
    min_points: int = 5
    nominal_capacity: float | None = None  # C (for dU/dx = dU/dQ · Q)
    plateau_slope: float = 0.2  # V per unit stoichiometry: |dU/dx| below this = two-phase plateau
    plateau_mv: float = 2.0  # mV over the current step: below this = plateau when the capacity is unknown
    slope_change: float = 0.3  # relative change of the step's slope across its second half: OCV slope changing
    delay_max_ratio: float = 0.5  # t₀/t_min above which the window starts too close to the delay
    fit_delay: bool = True
    delay_refinements: int = 2  # refits on the shifted times t − t₀
    steady_ratio: float = 0.5  # a first current step shorter than this × τ_d is not pseudo-steady


def _parabola(x: np.ndarray, e: np.ndarray) -> tuple[float, float]:
    """Least squares e = c0 + c1·x + c2·x² (x of order 1), 2×2 normal equations on the centred
    columns x − x̄ and (x − x̄)² − mean (polyfit's answer to ~1e-12, without its SVD).
    Returns (c2, c1)."""
    xm = x.sum() / x.size
    u = x - xm
    w = u * u
    w = w - w.sum() / w.size
    y = e - e.sum() / e.size
    s11, s12, s22 = float(u @ u), float(u @ w), float(w @ w)
    y1, y2 = float(u @ y), float(w @ y)
    det = s11 * s22 - s12 * s12
    if not det > 1e-12 * s11 * s22:  # (near) rank-deficient: the minimum-norm solution
        c2, c1, _c0 = np.polyfit(x, e, 2)
        return float(c2), float(c1)
    b1, b2 = (s22 * y1 - s12 * y2) / det, (s11 * y2 - s12 * y1) / det
    return b2, b1 - 2.0 * b2 * xm  # b1·u + b2·u² = (b1 − 2b2·x̄)·x + b2·x² + const


def tangent_at_end(t: np.ndarray, e: np.ndarray) -> tuple[float, float]:
    """Slope dE/dt at the last sample of a least-squares parabola through (t, e), and the relative
    change of the slope across the span. Returns (slope [V/s], change)."""
    x = t - t[-1]
    scale = float(x.max() - x.min()) if t.size else 0.0
    if t.size < 4 or not scale > 0:
        return math.nan, math.nan
    c2, c1 = _parabola(x / scale, e)
    slope = c1 / scale
    return float(slope), float(abs(2.0 * c2 / c1)) if c1 else math.inf


def fit_interruption(t: np.ndarray, e: np.ndarray, slope: float, delay: bool = True,
                     refinements: int = 2, near: float | None = None) -> tuple[float, float, float, float]:
    """Fit E(t) = a + slope·t − slope·θ(t − t₀) (θ the sphere surface excursion) for τ_d and t₀.
    The history term slope·t is removed first, then the sphere fit with slope −slope; t₀ from its
    first-order delay term, refined by refitting on t − t₀ (the first-order term alone reads t₀
    15 % long at t₀/t_min = 0.3). A delay that is not resolved (≤ 0 or ≤ 3 standard errors) is
    dropped; one beyond t_min/2 is returned unrefined. `near`: a τ_d expected within a factor 2
    (searched there first). Returns (τ_d [s], a [V], rms [V], t₀ [s])."""
    y = e - slope * t
    window = SphereFit(t, y, -slope)
    tau_d, a, rms, t0, se = window.fit(delay=delay, near=near)
    if not delay:
        return tau_d, a, rms, 0.0
    if not (math.isfinite(t0) and t0 > 0.0 and t0 > 3.0 * se):  # noise, not a delay
        tau_d, a, rms, _t0, _se = window.fit(delay=False, near=tau_d)
        return tau_d, a, rms, 0.0
    if t0 >= 0.5 * float(t.min()):  # too close to the window start to refine (the operator flags it)
        return tau_d, a, rms, t0
    total = t0
    for _ in range(refinements):
        tau_d, a, rms, t0, _se = SphereFit(t - total, y, -slope).fit(delay=True, near=tau_d)
        if not math.isfinite(t0):
            break
        total += t0
    return tau_d, a, rms, total


class IciOperator:
    """Rows of kind "ici", one per rest that follows a current step of technique "ici"."""

    kind = "ici"

    def __init__(self, settings: IciSettings | None = None) -> None:
        self.s = settings or IciSettings()
        self._mode: str | None = None
        self._cc: tuple[list, list, list] = ([], [], [])
        self._rest: tuple[list, list] = ([], [])
        self._t0 = 0.0
        self._cycle: int | None = None
        self._n = 0
        self._after_interruption = False  # the current step follows an interruption of the same sequence
        self._steady = False

    def feed_event(self, event: Event) -> list[MetricRow]:
        if event.kind == "step_start":
            was_rest = self._mode == "rest"
            out = self._finish() if was_rest else []
            if event.data.get("technique") != "ici":
                self._mode, self._after_interruption = None, False
                return out
            cur = event.data.get("current_ampere")
            is_cc = (event.tags or {}).get("role") == "pulse" or (cur not in (None, 0, 0.0)) \
                or str(event.data.get("step_type", "")).startswith("CC")
            self._t0 = float(event.test_time_second or 0.0)
            if is_cc:
                self._steady = was_rest and self._after_interruption
                self._mode, self._cc = "cc", ([], [], [])
            elif self._mode == "cc":
                self._mode, self._rest = "rest", ([], [])
                self._cycle = event.cycle_count
            else:
                self._mode, self._after_interruption = None, False
            return out
        if event.kind in ("step_end", "run_end", "stop", "abort", "fault") and self._mode == "rest":
            return self._finish()
        return []

    def feed_samples(self, rows: Mapping[str, np.ndarray]) -> list[MetricRow]:
        if self._mode is None or len(rows["test_time_second"]) == 0:
            return []
        t, v = column(rows, "test_time_second"), column(rows, "voltage_volt")
        ok = np.isfinite(v)
        if self._mode == "cc":
            self._cc[0].append(t[ok])
            self._cc[1].append(v[ok])
            self._cc[2].append(column(rows, "current_ampere")[ok])
        else:
            self._rest[0].append(t[ok] - self._t0)
            self._rest[1].append(v[ok])
        return []

    def _finish(self) -> list[MetricRow]:
        self._mode = None
        steady, self._after_interruption = self._steady, True
        if not self._cc[0] or not self._rest[0]:
            return []
        tc, vc, ic = (np.concatenate(x) for x in self._cc)
        tr, vr = (np.concatenate(x) for x in self._rest)
        if tc.size < 4 or tr.size == 0:
            return []
        current = float(ic.sum()) / ic.size
        half = tc >= tc[0] + 0.5 * (tc[-1] - tc[0])
        dedt, change = tangent_at_end(tc[half], vc[half])
        w = (tr >= self.s.t_min) & (tr <= self.s.t_max)
        flags: list[str] = []
        data = {"interruption_index": self._n, "cycle_count": self._cycle,
                "test_time_second": float(self._t0 + tr[-1]), "current_ampere": current,
                "cc_slope_volt_per_second": dedt, "cc_slope_change": change,
                "potential_cc_end_volt": float(vc[-1]), "cc_duration_second": float(tc[-1] - tc[0]),
                "n_points": int(w.sum()), "direction": "discharge" if current < 0 else "charge"}
        self._n += 1
        if w.sum() < self.s.min_points:
            flags.append("too_few_points")
            data.update(flags=flags, valid=False)
            return [MetricRow("ici", data)]
        if not math.isfinite(dedt) or dedt == 0:
            flags.append("no_cc_slope")
            data.update(flags=flags, valid=False)
            return [MetricRow("ici", data)]
        q = self.s.nominal_capacity
        if q and current:
            data["ocv_slope_volt"] = dedt / current * q  # dU/dx (x over the nominal capacity)
            if abs(data["ocv_slope_volt"]) < self.s.plateau_slope:
                flags.append("plateau")
        elif abs(dedt * data["cc_duration_second"]) * 1e3 < self.s.plateau_mv:
            flags.append("plateau")
        if change > self.s.slope_change:
            flags.append("ocv_slope_changing")
        tw, ew = tr[w], vr[w]
        two_term = fit_two_term(tw, ew)
        k0 = two_term[1]
        guess = 9.0 * math.pi / 4.0 * (k0 / dedt) ** 2  # τ_d = R²/D of the two-term estimate (within ±30 %)
        tau_d, a_s, rms, delay = fit_interruption(tw, ew, dedt, self.s.fit_delay, self.s.delay_refinements, guess)
        a, k, c, r2 = fit_two_term(tw, ew, delay) if delay else two_term
        a1, k1, r2_1 = fit_sqrt(tw, ew)
        r = self.s.particle_radius
        data.update({
            "e0_volt": a_s, "diffusion_time_second": tau_d, "sphere_fit_rms_volt": rms,
            "response_delay_second": delay, "sqrt_slope_volt_per_sqrt_second": k, "linear_slope_volt_per_second": c,
            "two_term_r2": r2, "sqrt_t_r2": r2_1,
            "resistance_ohm": (float(vc[-1]) - a_s) / current if current else None,
            "resistance_one_term_ohm": (float(vc[-1]) - a1) / current if current else None,
            "diffusion_coefficient_cm2_s": r * r / tau_d * M2_TO_CM2 if r and math.isfinite(tau_d) else None,
            "diffusion_coefficient_two_term_cm2_s": sqrt_t_diffusion(r, dedt, k) * M2_TO_CM2 if r else None,
            "diffusion_coefficient_one_term_cm2_s": sqrt_t_diffusion(r, dedt, k1) * M2_TO_CM2 if r else None,
        })
        if not math.isfinite(tau_d):
            flags.append("fit_failed")
        elif not steady and data["cc_duration_second"] < self.s.steady_ratio * tau_d:
            # a first current step shorter than τ_d/2: the surface still accelerates at the interruption,
            # so the step's slope is not the history's (the first 5 min step of the hard-carbon ICI: +5…+15 %)
            flags.append("not_pseudo_steady")
        if delay > self.s.delay_max_ratio * self.s.t_min:
            flags.append("double_layer_delay")
        data.update(flags=flags, valid=not flags and data["diffusion_coefficient_cm2_s"] is not None)
        return [MetricRow("ici", data)]
