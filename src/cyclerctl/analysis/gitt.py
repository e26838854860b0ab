"""GITT per pulse: three diffusion-coefficient estimators side by side, with validity flags.

For a pulse of duration τ at current I starting from the relaxed potential E_before and relaxing to
E_after: ΔE_s = E_after − E_before, dE/dt_eq = ΔE_s/τ (secant slope of the relaxed potentials).

- classic: Weppner–Huggins as the source paper writes it, D = 4/(πτ)·(m_B V_M/(M_B S))²·(ΔE_s/ΔE_τ)²,
  with m_B V_M/(M_B S) = L_eff (R_p/3 for spheres unless given) and ΔE_τ = E(τ) − E(0⁺), E(0⁺) the
  IR-free start (intercept of the two-term fit). Biased low for spheres by classic_bias(τ/τ_d)
  (0.83 at τ/τ_d = 0.01); the expected factor is reported beside it.
- two_term: fit E = a + A√t + B·t over the pulse (t ≥ t_min) and D = 4/(9π)·R²·(dE/dt₀ / A)²;
  exact in the short-time limit, biased for τ/τ_d ≳ 0.03.
- sphere: fit of the exact constant-flux sphere solution to the whole pulse (one parameter τ_d);
  D = R²/τ_d; stays exact for long pulses. This is the reported `diffusion_coefficient_cm2_s`.

dE/dt₀ is the OCV tangent at the pulse start: the secant ΔE_s/τ corrected by the OCV curvature
d²E/dQ² from three relaxed points (the operator: previous pulse start, this pulse's start and end),
which the sphere fit also follows to second order across the surface excursion. Both fits allow for
the double-layer delay of the diffusion response, √t → √t − t₀/(2√t), t₀ = 2·R_ct·C_dl (fitted).
All assume a single sphere size, constant D over the pulse and a constant IR/kinetic overpotential
after the initial jump. Flags say when the data break them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .base import KELVIN_OFFSET, Event, MetricRow, column
from .diffusion import (
    classic_bias,
    fit_line,
    fit_sphere,
    fit_sqrt,
    fit_two_term,
    line_at,
    sqrt_t_diffusion,
    weppner_huggins,
)

M2_TO_CM2 = 1e4


@dataclass
class GittSettings:
    particle_radius: float | None = None  # m
    l_eff: float | None = None  # m, m_B V_M/(M_B S); default R_p/3
    nominal_capacity: float | None = None  # C (for dU/dx = dU/dQ · Q)
    t_min: float = 1.0  # s, first time used by the pulse fits (after the IR and double-layer jump)
    relax_threshold: float = 1e-3 / 3600  # V/s (1 mV/h): |dE/dt| at the end of the rest
    relax_window: float = 600.0  # s, trailing window of the rest used for dE/dt
    plateau_slope: float = 0.2  # V per unit stoichiometry: |dU/dx| below this = two-phase plateau
    plateau_mv: float = 2.0  # mV: |ΔE_s| below this = plateau when the capacity is unknown
    slope_change: float = 0.3  # relative change of dE/dt_eq between pulses flagged as OCV curvature
    sqrt_r2_min: float = 0.995  # R² of E vs √t over the pulse
    two_term_max_ratio: float = 0.03  # τ/τ_d above which the two-term fit is flagged biased
    sphere_max_ratio: float = 10.0  # τ/τ_d above which the pulse no longer resolves the diffusion time
    min_points: int = 8
    fit_delay: bool = True  # the sphere fit also fits the diffusion response delay t₀ = 2·R_ct·C_dl
    delay_max_ratio: float = 0.03  # t₀/τ above which the first-order delay term no longer holds


@dataclass
class _Pulse:
    index: int
    t_start: float
    e_before: float
    e_before_se: float
    cycle: int | None
    current: float | None
    t: list = field(default_factory=list)
    e: list = field(default_factory=list)
    i: list = field(default_factory=list)
    temp: list = field(default_factory=list)  # temperature_t1_celsius during the pulse
    rest_t: list = field(default_factory=list)
    rest_e: list = field(default_factory=list)
    rest_t0: float | None = None


def analyze_pulse(t: np.ndarray, e: np.ndarray, current: float, e_before: float, e_after: float,
                  settings: GittSettings, rest_t: np.ndarray | None = None,
                  rest_e: np.ndarray | None = None, tau: float | None = None,
                  ocv_curvature: float | None = None) -> dict:
    """All three estimators for one pulse. `t` is time since the pulse start (s), `e` the potential (V);
    `rest_t`/`rest_e` the following rest (time since the rest start) for the relaxation check.

    `ocv_curvature` is d²E/dQ² of the relaxed potentials (V/C², e.g. from the previous pulse's
    relaxed points). With it the sphere and two-term fits use the OCV tangent at the pulse start,
    dE/dt_0 = ΔE_s/τ − ½·(d²E/dQ²)·I²·τ, and the sphere fit follows the curved OCV to second order
    (the surface travels ~h(u)/(3u) times further than the mean, into a different OCV slope);
    without it the OCV is taken as linear and the row is flagged `ocv_curvature_unknown`."""
    tau = float(tau if tau is not None else t[-1])
    flags: list[str] = []
    if not (math.isfinite(e_before) and math.isfinite(e_after)):
        return {"pulse_duration_second": tau, "current_ampere": current, "flags": ["no_open_circuit_potential"],
                "valid": False, "potential_before_volt": e_before, "potential_after_volt": e_after}
    de_s = e_after - e_before
    slope = de_s / tau if tau > 0 else math.nan
    if ocv_curvature is not None and not math.isfinite(ocv_curvature):
        ocv_curvature = None
    k_t = ocv_curvature * current * current if ocv_curvature is not None else 0.0  # d²E/dt², V/s²
    slope0 = slope - 0.5 * k_t * tau  # OCV tangent at the pulse start, V/s
    r = settings.particle_radius
    l_eff = settings.l_eff if settings.l_eff is not None else (r / 3.0 if r else None)
    w = t >= settings.t_min
    tw, ew = t[w], e[w]
    out: dict = {
        "pulse_duration_second": tau, "current_ampere": current,
        "potential_before_volt": e_before, "potential_after_volt": e_after,
        "delta_e_s_volt": de_s, "relaxed_slope_volt_per_second": slope,
        "ocv_tangent_slope_volt_per_second": slope0,
        "ocv_curvature_volt_per_coulomb2": ocv_curvature,
        "ir_drop_volt": float(e[0] - e_before) if e.size else None,
        "n_points": int(tw.size),
    }
    out["ohmic_resistance_ohm"] = (out["ir_drop_volt"] / current) if current and e.size else None
    q = current * tau
    dudq = de_s / q if q else math.nan
    out["ocv_slope_volt_per_coulomb"] = dudq
    if settings.nominal_capacity:
        out["ocv_slope_volt"] = dudq * settings.nominal_capacity  # dU/dx (x over the nominal capacity)
        if abs(out["ocv_slope_volt"]) < settings.plateau_slope:
            flags.append("plateau")
    elif abs(de_s) * 1e3 < settings.plateau_mv:
        flags.append("plateau")
    if tw.size < settings.min_points:
        flags.append("too_few_points")
        out["flags"] = flags
        out["valid"] = False
        return out
    tau_d, a_sph, rms, delay, delay_se = fit_sphere(tw, ew, slope0, k_t, delay=settings.fit_delay)
    resolved = math.isfinite(delay) and 0.0 < delay < 0.5 * settings.t_min and delay > 3.0 * delay_se
    if settings.fit_delay and not resolved:  # noise, not a delay: the extra term would only add scatter
        tau_d, a_sph, rms, delay, delay_se = fit_sphere(tw, ew, slope0, k_t, delay=False, near=tau_d)
    # the two-term fit takes the sphere fit's response delay t0 to the same first order,
    # A·√(t − t0) ≈ A·(√t − t0/(2√t)); without it the delay reads as a smaller √t slope (12 % low D
    # on an 18 s hard-carbon pulse)
    a, b, c, r2 = fit_two_term(tw, ew, delay)
    _, _, r2_sqrt = fit_sqrt(tw, ew)
    de_t = float(ew[-1] - a)
    out.update({
        "e0_volt": a, "sqrt_slope_volt_per_sqrt_second": b, "linear_slope_volt_per_second": c,
        "two_term_r2": r2, "sqrt_t_r2": r2_sqrt, "delta_e_tau_volt": de_t,
        "diffusion_time_second": tau_d, "sphere_fit_rms_volt": rms, "response_delay_second": delay,
        "tau_over_diffusion_time": tau / tau_d if tau_d and math.isfinite(tau_d) else None,
        "surface_excursion_volt": abs(de_t),
    })
    u = tau / tau_d if math.isfinite(tau_d) and tau_d > 0 else math.nan
    out["classic_bias_expected"] = classic_bias(u) if math.isfinite(u) else None
    if r:
        d_sph = r * r / tau_d if math.isfinite(tau_d) else math.nan
        d_two = sqrt_t_diffusion(r, slope0, b)
        out["diffusion_coefficient_cm2_s"] = d_sph * M2_TO_CM2
        out["diffusion_coefficient_two_term_cm2_s"] = d_two * M2_TO_CM2
    else:
        out["diffusion_coefficient_cm2_s"] = None
        out["diffusion_coefficient_two_term_cm2_s"] = None
    out["diffusion_coefficient_classic_cm2_s"] = (weppner_huggins(tau, l_eff, de_s, de_t) * M2_TO_CM2
                                                  if l_eff else None)
    out["l_eff_m"] = l_eff
    if not math.isfinite(tau_d):
        flags.append("fit_failed")
    if ocv_curvature is None:
        flags.append("ocv_curvature_unknown")
    if delay > settings.delay_max_ratio * tau:
        flags.append("double_layer_delay")  # (R_ct·C_dl)² terms: a 4 s hard-carbon pulse reads D 3-7 % high
    if r2_sqrt < settings.sqrt_r2_min:
        flags.append("sqrt_t_nonlinear")
    if math.isfinite(u) and u > settings.two_term_max_ratio:
        flags.append("two_term_biased")
    if math.isfinite(u) and u > settings.sphere_max_ratio:
        flags.append("diffusion_time_unresolved")  # the particle is near uniform for most of the pulse
    if out["classic_bias_expected"] is not None and out["classic_bias_expected"] < 0.95:
        flags.append("classic_biased")
    if rest_t is not None and rest_e is not None and rest_t.size >= 3:
        tail = rest_t >= rest_t[-1] - settings.relax_window
        if tail.sum() >= 3 and np.ptp(rest_t[tail]) > 0:
            _, dedt = fit_line(rest_t[tail], rest_e[tail])
            out["rest_end_slope_volt_per_second"] = dedt
            if abs(dedt) > settings.relax_threshold:
                flags.append("not_relaxed")
        out["rest_duration_second"] = float(rest_t[-1])
    else:
        flags.append("not_relaxed")
    out["flags"] = flags
    return out


# flags that make the headline (sphere-fit) D invalid; bias flags concern the other estimators
INVALIDATING = frozenset({"no_open_circuit_potential", "plateau", "not_relaxed", "too_few_points", "fit_failed",
                          "ocv_slope_changing", "diffusion_time_unresolved", "ocv_curvature_unknown",
                          "double_layer_delay"})


_NO_RECENT = (np.empty(0), np.empty(0))  # no open-circuit tail (never written to)


class GittOperator:
    """Per-pulse GITT rows (kind "gitt"), from steps whose technique is "gitt": a pulse is a step with
    current (tags role=pulse, or a CC step type), a rest the step after it. The row is emitted when the
    rest ends (next step start, its step_end, or run end)."""

    kind = "gitt"
    technique = "gitt"

    def __init__(self, settings: GittSettings | None = None) -> None:
        self.s = settings or GittSettings()
        self._last_v = math.nan
        self._recent: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))  # trailing open-circuit samples
        self._mode: str | None = None  # "pulse" | "rest" | None
        self._pulse: _Pulse | None = None
        self._n = 0
        self._prev_slope: float | None = None
        self._prev_pulse: tuple[int, float, float] | None = None  # (index, E_before, charge) of the last pulse
        self.ocv_slope_per_coulomb: float | None = None  # dU/dQ (V/C) of the latest pulse off a plateau
        self.relaxed_points: list[tuple[float, float]] = []  # (charge passed in GITT so far, E relaxed)
        self._q = 0.0
        self.results: list[dict] = []  # rows so far (the Arrhenius operator reads D(T) from them)

    def feed_event(self, event: Event) -> list[MetricRow]:
        out: list[MetricRow] = []
        if event.kind == "step_start":
            tech = event.data.get("technique")
            role = (event.tags or {}).get("role")
            is_pulse = role == "pulse" or (role is None and str(event.data.get("step_type", "")).startswith("CC"))
            if self._mode == "rest" and not (tech == self.technique and not is_pulse):
                out += self._finish()
            if tech == self.technique and is_pulse:
                if self._mode is not None:
                    out += self._finish()
                t_start = float(event.test_time_second or 0.0)
                self._pulse = _Pulse(self._n, t_start, *self._relaxed_before(t_start),
                                     event.cycle_count, event.data.get("current_ampere"))
                self._n += 1
                self._mode = "pulse"
            elif tech == self.technique and self._mode == "pulse":
                self._mode = "rest"
                self._pulse.rest_t0 = float(event.test_time_second) if event.test_time_second is not None else None
            elif self._mode is not None:
                out += self._finish()
            if tech != self.technique:
                # another step (a temperature change, a cycle, a rest) ends the series: the charge
                # counted and the relaxed points no longer place the next pulse on this OCV, so the
                # next pulse starts a new curvature chain
                self._prev_pulse = None
        elif event.kind == "step_end" and self._mode == "rest":
            out += self._finish()
        elif event.kind in ("run_end", "stop", "abort", "fault") and self._mode is not None:
            out += self._finish()
        return out

    def feed_samples(self, rows: Mapping[str, np.ndarray]) -> list[MetricRow]:
        t = column(rows, "test_time_second")
        if t.size == 0:
            return []
        v = column(rows, "voltage_volt")
        if t.size == 1 and self._mode != "pulse":
            return self._feed_one(float(t[0]), float(v[0]), float(column(rows, "current_ampere")[0]))
        if self._pulse is not None and self._mode is not None:
            ok = np.isfinite(v)
            p = self._pulse
            if self._mode == "pulse":
                p.t.append(t[ok] - p.t_start)
                p.e.append(v[ok])
                p.i.append(column(rows, "current_ampere")[ok])
                p.temp.append(column(rows, "temperature_t1_celsius")[ok])
            else:
                t0 = p.rest_t0 if p.rest_t0 is not None else float(t[0])
                p.rest_t.append(t[ok] - t0)
                p.rest_e.append(v[ok])
        fin = np.isfinite(v)
        if fin.any():
            self._last_v = float(v[fin][-1])
        oc = fin & (column(rows, "current_ampere") == 0)
        if self._mode == "pulse" or not oc[-1]:
            self._recent = (np.empty(0), np.empty(0))
        else:
            k = 0 if oc.all() else len(oc) - int(np.argmin(oc[::-1]))  # start of the trailing open-circuit run
            if k == 0:
                rt, rv = np.concatenate((self._recent[0], t)), np.concatenate((self._recent[1], v))
            else:
                rt, rv = t[k:], v[k:]
            self._recent = (rt[-64:], rv[-64:])
        return []

    def _feed_one(self, t: float, v: float, i: float) -> list[MetricRow]:
        """feed_samples for a block of one sample outside a pulse (real-time acquisition), on Python
        floats: the same rest record and open-circuit tail as the array path."""
        fin = math.isfinite(v)
        if self._pulse is not None and self._mode == "rest" and fin:
            p = self._pulse
            p.rest_t.append(np.array((t - (p.rest_t0 if p.rest_t0 is not None else t),)))
            p.rest_e.append(np.array((v,)))
        if fin:
            self._last_v = v
        if not (fin and i == 0):
            self._recent = _NO_RECENT
        else:
            rt, rv = self._recent
            self._recent = (np.append(rt[-63:], t), np.append(rv[-63:], v))
        return []

    def _relaxed_before(self, t_start: float) -> tuple[float, float]:
        """The open-circuit potential before a pulse (a line through the trailing rest samples) and
        its standard error (NaN when there is no such line)."""
        rt, rv = self._recent
        w = rt >= t_start - self.s.relax_window
        if w.sum() >= 3 and np.ptp(rt[w]) > 0:
            return line_at(rt[w], rv[w], t_start)
        return self._last_v, math.nan

    def _curvature(self, index: int, e_before: float, e_after: float, q: float,
                   se: tuple[float, float]) -> tuple[float | None, float]:
        """d²E/dQ² (V/C²) of the relaxed potentials through the previous pulse's start, this pulse's
        start and end (a parabola through three relaxed points), if the previous pulse came just
        before and went the same way (None otherwise), and its standard error from those of the
        three relaxed potentials (`se`: this pulse's start and end)."""
        if self._prev_pulse is None:
            return None, math.nan
        i_prev, e_prev, q_prev, se_prev = self._prev_pulse
        if i_prev != index - 1 or q_prev == 0 or q == 0 or (q_prev > 0) != (q > 0):
            return None, math.nan
        k = 2.0 / (q + q_prev)
        c = k * ((e_after - e_before) / q - (e_before - e_prev) / q_prev)
        s_a, s_b, s_p = (x if math.isfinite(x) else 0.0 for x in (se[1], se[0], se_prev))  # no line: one sample, taken as exact
        sd = abs(k) * math.sqrt((s_a / q) ** 2 + (s_b * (1.0 / q + 1.0 / q_prev)) ** 2 + (s_p / q_prev) ** 2)
        return (c, sd) if math.isfinite(c) else (None, math.nan)

    def _finish(self) -> list[MetricRow]:
        p, mode = self._pulse, self._mode
        self._pulse, self._mode = None, None
        if p is None or not p.t:
            return []
        t, e, i = np.concatenate(p.t), np.concatenate(p.e), np.concatenate(p.i)
        rest_t = np.concatenate(p.rest_t) if p.rest_t else np.empty(0)
        rest_e = np.concatenate(p.rest_e) if p.rest_e else np.empty(0)
        if t.size < 2 or mode != "rest" or rest_e.size == 0:
            return []
        current = float(p.current) if p.current else float(np.nanmean(i))
        tau = float(p.rest_t0 - p.t_start) if p.rest_t0 is not None else float(t[-1])
        e_after, e_after_se = float(rest_e[-1]), math.nan
        tail = rest_t >= rest_t[-1] - self.s.relax_window
        if tail.sum() >= 3 and np.ptp(rest_t[tail]) > 0:
            e_after, e_after_se = line_at(rest_t[tail], rest_e[tail], float(rest_t[-1]))
        q_pulse = current * tau
        curv, curv_se = self._curvature(p.index, p.e_before, e_after, q_pulse, (p.e_before_se, e_after_se))
        # the correction is applied where the curvature is resolved (> 3 standard errors): below
        # that its noise, which the surface excursion amplifies h(u)/(3u)-fold, outweighs its bias
        applied = None if curv is None else (curv if abs(curv) > 3.0 * curv_se else 0.0)
        res = analyze_pulse(t, e, current, p.e_before, e_after, self.s, rest_t, rest_e, tau=tau,
                            ocv_curvature=applied)
        res["ocv_curvature_measured_volt_per_coulomb2"] = curv
        res["ocv_curvature_standard_error_volt_per_coulomb2"] = curv_se if curv is not None else None
        self._prev_pulse = (p.index, p.e_before, q_pulse, p.e_before_se)
        slope = res.get("relaxed_slope_volt_per_second")
        if self._prev_slope is not None and slope and np.sign(slope) == np.sign(self._prev_slope):
            if abs(slope / self._prev_slope - 1.0) > self.s.slope_change:
                res["flags"].append("ocv_slope_changing")
        self._prev_slope = slope
        self._q += current * tau
        if "plateau" not in res["flags"] and math.isfinite(res.get("ocv_slope_volt_per_coulomb", math.nan)):
            self.ocv_slope_per_coulomb = res["ocv_slope_volt_per_coulomb"]
        self.relaxed_points.append((self._q, e_after))
        res["valid"] = not (set(res["flags"]) & INVALIDATING) and res.get("diffusion_coefficient_cm2_s") is not None
        temp = np.concatenate(p.temp) if p.temp else np.empty(0)
        temp = temp[np.isfinite(temp)]
        res["temperature_kelvin"] = float(temp.mean()) + KELVIN_OFFSET if temp.size else None
        res.update({"pulse_index": p.index, "cycle_count": p.cycle, "test_time_second": p.t_start + tau + float(rest_t[-1]),
                    "start_time_second": p.t_start,
                    "direction": "discharge" if current < 0 else "charge", "cumulative_charge_c": self._q})
        row = MetricRow(self.kind, res)
        self.results.append(row.data)
        return [row]
