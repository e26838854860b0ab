"""ICI per current interruption (Lacey; Chien et al., Nat. Commun. 14 (2023) 2289).

During a short rest after a constant-current step, E(t) = E_I − I·R + k√t + c·t. We fit the two-term
form over [t_min, t_max] of the rest (the c·t term removes the +4…+15 % bias of a pure √t fit after a
long current step). R = (E_cc,end − E(0⁺))/I from the intercept; (dE/dt)_CC from a line through the
second half of the preceding current step; D = 4/(9π)·R_p²·((dE/dt)_CC / k)².
Assumes semi-infinite diffusion within the rest window (t_max ≪ R_p²/D) and a pseudo-steady profile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .base import Event, MetricRow, column
from .diffusion import fit_line, fit_sqrt, fit_two_term, sqrt_t_diffusion

M2_TO_CM2 = 1e4


@dataclass
class IciSettings:
    particle_radius: float | None = None  # m
    t_min: float = 1.0  # s
    t_max: float = 10.0  # s
    min_points: int = 5


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

    def feed_event(self, event: Event) -> list[MetricRow]:
        if event.kind == "step_start":
            out = self._finish() if self._mode == "rest" else []
            if event.data.get("technique") != "ici":
                self._mode = None
                return out
            cur = event.data.get("current_ampere")
            is_cc = (event.tags or {}).get("role") == "pulse" or (cur not in (None, 0, 0.0)) \
                or str(event.data.get("step_type", "")).startswith("CC")
            self._t0 = float(event.test_time_second or 0.0)
            if is_cc:
                self._mode, self._cc = "cc", ([], [], [])
            elif self._mode == "cc":
                self._mode, self._rest = "rest", ([], [])
                self._cycle = event.cycle_count
            else:
                self._mode = None
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
        if not self._cc[0] or not self._rest[0]:
            return []
        tc, vc, ic = (np.concatenate(x) for x in self._cc)
        tr, vr = (np.concatenate(x) for x in self._rest)
        if tc.size < 4 or tr.size == 0:
            return []
        current = float(np.mean(ic))
        half = tc >= tc[0] + 0.5 * (tc[-1] - tc[0])
        _, dedt = fit_line(tc[half], vc[half])
        w = (tr >= self.s.t_min) & (tr <= self.s.t_max)
        flags: list[str] = []
        data = {"interruption_index": self._n, "cycle_count": self._cycle,
                "test_time_second": float(self._t0 + tr[-1]), "current_ampere": current,
                "cc_slope_volt_per_second": dedt, "potential_cc_end_volt": float(vc[-1]),
                "n_points": int(w.sum()), "direction": "discharge" if current < 0 else "charge"}
        self._n += 1
        if w.sum() < self.s.min_points:
            flags.append("too_few_points")
            data.update(flags=flags, valid=False)
            return [MetricRow("ici", data)]
        a, k, c, r2 = fit_two_term(tr[w], vr[w])
        a1, k1, r2_1 = fit_sqrt(tr[w], vr[w])
        r = self.s.particle_radius
        data.update({
            "e0_volt": a, "sqrt_slope_volt_per_sqrt_second": k, "linear_slope_volt_per_second": c,
            "two_term_r2": r2, "sqrt_t_r2": r2_1,
            "resistance_ohm": (float(vc[-1]) - a) / current if current else None,
            "resistance_one_term_ohm": (float(vc[-1]) - a1) / current if current else None,
            "diffusion_coefficient_cm2_s": sqrt_t_diffusion(r, dedt, k) * M2_TO_CM2 if r else None,
            "diffusion_coefficient_one_term_cm2_s": sqrt_t_diffusion(r, dedt, k1) * M2_TO_CM2 if r else None,
        })
        if not math.isfinite(dedt) or dedt == 0:
            flags.append("no_cc_slope")
        data.update(flags=flags, valid=not flags and r is not None)
        return [MetricRow("ici", data)]
