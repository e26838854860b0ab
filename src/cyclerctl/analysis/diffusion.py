"""Diffusion in a spherical particle under constant flux, and the GITT/ICI estimators built on it.

Exact response (Crank, sphere of radius R, uniform flux from t = 0, u = t/τ_d, τ_d = R²/D):

    Δx_surf(t) = (I τ_d / (3 Q_th)) · h(u),   h(u) = 3u + 1/5 − 2 Σ exp(−λ_n² u)/λ_n²,  tan λ_n = λ_n

so with a linear OCV of slope dE/dt_eq (= ΔE_s/τ, the slope of the relaxed potentials in time) the
IR-free pulse potential is E(t) = E₀ + (dE/dt_eq)·(τ_d/3)·h(t/τ_d): one nonlinear parameter, τ_d.
h(u) = 2√(u/π) + u + O(u^{3/2}) at short times; the +u term is why the classic √t estimators read
D low for spheres. Evaluated in closed form at short times (u ≤ 0.05: h = e^u·erfc(−√u) − 1) and by
the series (150 roots plus an integral tail) above: relative error < 1e-12 everywhere.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from scipy.special import erfc

N_ROOTS = 150
U_SHORT = 0.05  # below: closed-form short-time solution; above: the series


@lru_cache(maxsize=4)
def _roots(n: int) -> np.ndarray:
    k = np.arange(1, n + 1) + 0.5
    lam = k * np.pi - 1.0 / (k * np.pi)
    for _ in range(30):
        f = np.sin(lam) - lam * np.cos(lam)  # tan λ − λ multiplied by cos λ, smooth near the roots
        df = lam * np.sin(lam)
        lam = lam - f / df
    lam.setflags(write=False)
    return lam


def sphere_roots(n: int = N_ROOTS) -> np.ndarray:
    """The first n positive roots of tan λ = λ (Newton from the asymptote (k+½)π − 1/((k+½)π))."""
    return _roots(max(n, N_ROOTS))[:n]


def sphere_h(u: np.ndarray, n_roots: int = N_ROOTS) -> np.ndarray:
    """h(u) = 3u + 1/5 − 2 Σ exp(−λ_n² u)/λ_n² (dimensionless surface excursion, u = t/τ_d).

    For u ≤ U_SHORT the Laplace-domain short-time solution is used, h = e^u·erfc(−√u) − 1 (its
    error, from the reflecting centre, is ~e^{−1/u}: < 1e-14 here); above it the series, which then
    converges in a few tens of terms."""
    u = np.atleast_1d(np.asarray(u, dtype=np.float64))
    uc = np.maximum(u, 0.0)
    short = uc <= U_SHORT
    h = np.empty_like(uc)
    if short.any():
        us = uc[short]
        h[short] = np.exp(us) * erfc(-np.sqrt(us)) - 1.0
    if (~short).any():
        ul = uc[~short]
        # terms with λ²u > 750 underflow: λ_n ≈ nπ needs n ≤ √(750/u)/π roots only
        n = min(n_roots, int(math.sqrt(750.0 / float(ul.min())) / math.pi) + 3)
        h[~short] = _sphere_h_series(ul, n)
    return np.where(u > 0, h, 0.0)


def sphere_h_derivatives(u: np.ndarray, n_roots: int = N_ROOTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """h(u), dh/du and d²h/du² (u > 0), one exponential table for all three. Short times:
    dh/du = h + 1 + 1/√(πu), d²h/du² = dh/du − 1/(2√π·u^{3/2}); series: dh/du = 3 + 2 Σ exp(−λ_n² u),
    d²h/du² = −2 Σ λ_n² exp(−λ_n² u) (tails by the same integral as h's)."""
    u = np.maximum(np.atleast_1d(np.asarray(u, dtype=np.float64)), 1e-300)
    h = np.empty_like(u)
    dh = np.empty_like(u)
    d2h = np.empty_like(u)
    short = u <= U_SHORT
    if short.any():
        us = u[short]
        h[short] = np.exp(us) * erfc(-np.sqrt(us)) - 1.0
        p = 1.0 / np.sqrt(np.pi * us)
        dh[short] = h[short] + 1.0 + p
        d2h[short] = dh[short] - 0.5 * p / us
    if (~short).any():
        ul = u[~short]
        n = min(n_roots, int(math.sqrt(750.0 / float(ul.min())) / math.pi) + 3)
        lam2 = sphere_roots(n) ** 2
        ex = np.exp(-lam2[None, :] * ul[:, None])
        a = n + 1.0
        su = np.sqrt(ul) * np.pi
        g = np.exp(-(su * a) ** 2)
        ec = erfc(su * a)
        tail = (g / a - np.sqrt(np.pi) * su * ec) / np.pi**2
        h[~short] = 3.0 * ul + 0.2 - 2.0 * ((ex / lam2[None, :]).sum(axis=1) + tail)
        dh[~short] = 3.0 + 2.0 * ex.sum(axis=1) + ec / np.sqrt(np.pi * ul)  # + 2 ∫_{N+1}^∞ exp(−π²u y²) dy
        d2h[~short] = -2.0 * (ex @ lam2) - a * g / ul - 0.5 * ec / (np.sqrt(np.pi) * ul**1.5)
    return h, dh, d2h


def _sphere_h_series(u: np.ndarray, n_roots: int) -> np.ndarray:
    lam = sphere_roots(n_roots)
    lam2 = lam * lam
    s = (np.exp(-lam2[None, :] * u[:, None]) / lam2[None, :]).sum(axis=1)
    # tail n > N: λ_n ≈ (n+½)π; Σ_{n>N} f(n) ≈ ∫_{N+½}^∞ f(x) dx = ∫_{A}^∞ e^{−π²u y²}/(π² y²) dy, A = N+1
    a = n_roots + 1.0
    su = np.sqrt(u) * np.pi
    tail = (np.exp(-(su * a) ** 2) / a - np.sqrt(np.pi) * su * erfc(su * a)) / np.pi**2
    return 3.0 * u + 0.2 - 2.0 * (s + tail)


def classic_bias(u: float) -> float:
    """D_classic / D_true of the Weppner–Huggins end-point formula for a sphere, pulse τ = u·τ_d."""
    h = float(sphere_h(np.array([u]))[0])
    return 4.0 * u / (math.pi * h * h)


def fit_two_term(t: np.ndarray, e: np.ndarray, delay: float = 0.0) -> tuple[float, float, float, float]:
    """Least squares E = a + b√t + c·t (centred columns, 2×2 normal equations scaled to unit
    diagonal; a rank-deficient window falls back to the minimum-norm solution). With a response
    delay t0 the √t column is √t − t0/(2√t) (√(t − t0) to first order). Returns (a, b, c, R²)."""
    x1, x2 = np.sqrt(t), t
    if delay:
        x1 = x1 - 0.5 * delay / x1
    n = t.size
    m1, m2, me = float(x1.sum()) / n, float(x2.sum()) / n, float(e.sum()) / n
    u1, u2, y = x1 - m1, x2 - m2, e - me
    s11, s22, s12 = float(u1 @ u1), float(u2 @ u2), float(u1 @ u2)
    y1, y2 = float(u1 @ y), float(u2 @ y)
    det = 1.0 - s12 * s12 / (s11 * s22) if s11 > 0 and s22 > 0 else 0.0
    if det > 1e-10:  # Cramer's rule on the correlation form (condition 1/det)
        n1, n2 = math.sqrt(s11), math.sqrt(s22)
        r, z1, z2 = s12 / (n1 * n2), y1 / n1, y2 / n2
        b, c = (z1 - r * z2) / det / n1, (z2 - r * z1) / det / n2
    else:
        (b, c), *_ = np.linalg.lstsq(np.column_stack([u1, u2]), y, rcond=None)
    a = me - b * m1 - c * m2
    ss = float(y @ y)
    res = y - b * u1 - c * u2
    return float(a), float(b), float(c), 1.0 - float(res @ res) / ss if ss > 0 else 1.0


def _line(x: np.ndarray, e: np.ndarray) -> tuple[float, float, float]:
    """Least squares e = a + b·x in closed form (centred). Returns (a, b, R²)."""
    mx, me = float(x.sum()) / x.size, float(e.sum()) / e.size
    u, y = x - mx, e - me
    uu = float(u @ u)
    b = float(u @ y) / uu if uu > 0 else 0.0
    ss = float(y @ y)
    res = y - b * u
    return float(me - b * mx), b, 1.0 - float(res @ res) / ss if ss > 0 else 1.0


def fit_sqrt(t: np.ndarray, e: np.ndarray) -> tuple[float, float, float]:
    """Least squares E = a + b√t. Returns (a, b, R²)."""
    return _line(np.sqrt(t), e)


def line_at(t: np.ndarray, e: np.ndarray, t_star: float) -> tuple[float, float]:
    """The least-squares line E = a + b·t evaluated at t_star, and the standard error of that value
    from the residual scatter, σ·√(1/n + (t_star − t̄)²/Σ(t − t̄)²). Returns (E(t_star), se)."""
    mt = t.mean()
    u = t - mt
    uu = float(u @ u)
    a, b, _r2 = _line(t, e)
    n = t.size
    if n < 3 or uu <= 0:
        return a + b * t_star, math.nan
    res = e - (a + b * t)
    sigma2 = float(res @ res) / (n - 2)
    return a + b * t_star, math.sqrt(sigma2 * (1.0 / n + (t_star - mt) ** 2 / uu))


def fit_line(t: np.ndarray, e: np.ndarray) -> tuple[float, float]:
    """Least squares E = a + b·t. Returns (a, b)."""
    a, b, _r2 = _line(t, e)
    return a, b


LN10 = math.log(10.0)
_GOLD = 0.5 * (3.0 - math.sqrt(5.0))  # golden-section fraction, 0.382
_SQRT_EPS = math.sqrt(np.finfo(float).eps)


def bounded_minimum(f: Callable[[float], float], lo: float, hi: float, xtol: float = 1e-10,
                    max_evals: int = 200) -> float:
    """x in [lo, hi] minimising f, for f unimodal there (a bracket edge may be the minimum).

    Starts at the midpoint (fit_sphere centres its brackets on its best guess). Golden-section
    search on the bracket [a, b] around the best point so far, sped up by parabolic
    steps: the vertex of the parabola through the three best points is tried when it lies inside
    the bracket and is less than half as far from the best point as the step before last (so a
    parabola that stalls falls back to golden sections); a vertex at the best point is checked by
    a probe tol/2 to its side. No point is placed closer than tol/2 to the best point or to a
    bracket end; a tie in f keeps the old best point. Stopping rule: the best point is within tol = xtol +
    √ε·|x| of both ends of the bracket, so the minimum lies within tol of the returned x (or
    max_evals is reached); √ε relative is as far as a smooth minimum resolves in floating point."""
    if not hi > lo:
        raise ValueError(f"bounded_minimum needs lo < hi, got [{lo}, {hi}]")
    a, b = lo, hi
    x = 0.5 * (a + b)
    fx = f(x)
    w, fw, v, fv = x, fx, x, fx  # second and third best points
    step, prev_step = b - a, b - a
    n = 1
    while n < max_evals:
        tol = xtol + _SQRT_EPS * abs(x)
        if x - a <= tol and b - x <= tol:
            break
        h = 0.5 * tol
        u = math.nan
        if w != x and v != x and v != w:  # vertex of the parabola through (x, w, v)
            dw, dv = x - w, x - v
            num = dw * dw * (fx - fv) - dv * dv * (fx - fw)
            den = 2.0 * (dw * (fx - fv) - dv * (fx - fw))
            if den != 0.0:
                cand = x - num / den
                if abs(cand - x) < h:  # the vertex is at the best point: probe h away, larger side
                    u = x - h if x - a > b - x else x + h
                elif a + h <= cand <= b - h and abs(cand - x) < 0.5 * abs(prev_step):
                    u = cand
        if math.isnan(u):  # golden section of the larger side
            u = x - _GOLD * (x - a) if x - a > b - x else x + _GOLD * (b - x)
            if abs(u - x) < h:
                u = x + math.copysign(h, u - x)
        prev_step, step = step, u - x
        fu = f(u)
        n += 1
        if fu < fx:  # u is the new best: the old best bounds the bracket on the far side
            if u < x:
                b = x
            else:
                a = x
            v, fv, w, fw, x, fx = w, fw, x, fx, u, fu
        else:
            if u < x:
                a = u
            else:
                b = u
            if fu <= fw or w == x:
                v, fv, w, fw = w, fw, u, fu
            elif fu <= fv or v == x or v == w:
                v, fv = u, fu
    return x


def stationary_point(derivative: Callable[[float], tuple[float, float]], x: float, lo: float, hi: float,
                     xtol: float, max_evals: int = 60) -> float | None:
    """x in [lo, hi] where a smooth cost is smallest, from its exact derivative d(x) and a positive
    curvature estimate c(x) (`derivative(x)` returns (d, c), e.g. Gauss–Newton's), starting at x.

    Newton steps x − d/c; where |d| fell less than fourfold over the last step (c poor: a large
    residual), the secant of d through the last two points instead (the cost's own curvature) when
    that is positive. The sign of d narrows the bracket; a step that leaves it probes a bracket end
    not yet evaluated, or else bisects; an end where d still points outward is returned (the
    minimum at the edge). Stops (the step taken) when a step is below xtol, or when the steps
    contract at least a thousandfold and the error the contraction predicts after this step,
    |step|²/|previous step|, is below xtol. Returns None when d or c is not finite."""
    a, b = lo, hi
    a_seen = b_seen = False
    xp = dp = math.nan
    prev_step = math.nan
    for _ in range(max_evals):
        d, c = derivative(x)
        if not (math.isfinite(d) and math.isfinite(c)):
            return None
        if d == 0.0:
            return x
        if d > 0.0:
            if x <= lo:
                return lo
            b, b_seen = x, True
        else:
            if x >= hi:
                return hi
            a, a_seen = x, True
        if abs(d) > 0.25 * abs(dp):  # (false while dp is NaN)
            sec = (d - dp) / (x - xp)
            if sec > 0.0:
                c = sec
        xn = x - d / c if c > 0.0 else math.nan
        if not a < xn < b:
            if xn >= b and not b_seen:
                xn = b
            elif xn <= a and not a_seen:
                xn = a
            else:
                xn = 0.5 * (a + b)
        step = abs(xn - x)
        if step <= xtol or (step <= 1e-3 * prev_step and step * step <= xtol * prev_step):
            return xn
        xp, dp, x, prev_step = x, d, xn, step
    return x


def _search_terms(q: list[list[float]], delay: bool) -> tuple[float, float, float]:
    """Derivative of the variable-projection cost ‖r‖² with respect to x = ln τ_d, its Gauss–Newton
    curvature and the delay coefficient b, from the centred inner products q[i][j] of the columns
    (m, m_x, g, g_x, e): m the model's nonlinear part, g the delay column (zero when not fitted),
    _x their derivatives in x, e the data. With z = e − m and b = ⟨z,g⟩/⟨g,g⟩ the residual is
    r = z − b·g and, as the linear coefficients are optimal, d‖r‖²/dx = −2⟨r, m_x + b·g_x⟩; the
    curvature is 2‖P⊥(m_x + b·g_x)‖² (P⊥ off the constant and g)."""
    zx = q[4][1] - q[0][1]
    gg = q[2][2]
    if not (delay and gg > 0.0):
        return -2.0 * zx, 2.0 * q[1][1], 0.0
    b = (q[4][2] - q[0][2]) / gg
    zw = zx + b * (q[4][3] - q[0][3])
    gw = q[2][1] + b * q[2][3]
    ww = q[1][1] + 2.0 * b * q[1][3] + b * b * q[3][3]
    return -2.0 * (zw - b * gw), 2.0 * (ww - gw * gw / gg), b


_SERIES_TOL = 1e-17  # relative truncation of the short-time power series of h
# largest ln u at which K terms of the series leave the first dropped term below _SERIES_TOL·√u:
# (K+1)/2·ln u − ln Γ((K+3)/2) ≤ ln _SERIES_TOL + ½ ln u
_SERIES_LN_U = [2.0 * (math.log(_SERIES_TOL) + math.lgamma(0.5 * (k + 3))) / k for k in range(1, 80)]


@lru_cache(maxsize=64)
def _series_pattern(k_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights (without the slope) of the columns m, m_x, g, g_x, e on the powers t^{j/2}
    (j = −1 … K, then the data) with and without the delay columns, and the powers of √τ_d
    that multiply them: θ = Σ γ_k·√τ_d^{2−k}·t^{k/2}, g = θ'(t) = Σ (k/2)·γ_k·√τ_d^{2−k}·t^{k/2−1},
    γ_k = 1/(3Γ(k/2 + 1)); the ln τ_d-derivatives carry a factor (1 − k/2)."""
    m = k_max + 2
    k = np.arange(1, k_max + 1)
    kf = k.astype(np.float64)
    gamma = np.exp(-np.array([math.lgamma(0.5 * v + 1.0) for v in kf])) / 3.0
    plain = np.zeros((5, m + 1))
    power = np.zeros((5, m + 1))
    plain[0, k + 1] = gamma  # t^{k/2} sits in column k + 1
    plain[1, k + 1] = (1.0 - 0.5 * kf) * gamma
    plain[4, m] = 1.0
    power[0:2, k + 1] = 2.0 - kf
    power[2:4, k - 1] = 2.0 - kf  # t^{k/2 − 1} sits in column k − 1
    with_delay = plain.copy()
    with_delay[2, k - 1] = 0.5 * kf * gamma
    with_delay[3, k - 1] = (1.0 - 0.5 * kf) * 0.5 * kf * gamma
    for a in (plain, with_delay, power):
        a.setflags(write=False)
    return plain, with_delay, power


class _ShortTimeColumns:
    """The fit's columns on a window wholly at short times (t/τ_d ≤ U_SHORT for every τ_d tried) as
    a power series in √t: h(u) = e^u·erfc(−√u) − 1 = Σ_{k≥1} u^{k/2}/Γ(k/2 + 1), so θ, the delay
    column θ'(t) and their τ_d-derivatives are fixed powers t^{j/2} with τ_d-dependent weights
    (`_series_pattern`). The centred powers, the data and their Gram matrix are computed once per
    window; a search step then costs O(K²) instead of O(n) array work. K is chosen so that the
    first dropped term is below 1e-17 of h at the largest u the search may reach."""

    def __init__(self, t: np.ndarray, e: np.ndarray, slope: float, u_max: float) -> None:
        self.k_max = bisect.bisect_left(_SERIES_LN_U, math.log(u_max)) + 1
        self.u_max = math.exp(_SERIES_LN_U[self.k_max - 1]) if self.k_max <= len(_SERIES_LN_U) else 0.0
        m = self.k_max + 2
        st = np.sqrt(t)
        rows = np.empty((m + 1, t.size))
        rows[0] = 1.0 / st
        rows[1] = 1.0
        rows[2:m] = st
        np.multiply.accumulate(rows[1:m], axis=0, out=rows[1:m])
        rows[m] = e
        self.means = np.add.reduce(rows, axis=1) / t.size
        rows -= self.means[:, None]
        self.rows = rows
        self.gram = rows @ rows.T
        plain, with_delay, self.power = _series_pattern(self.k_max)
        self.weights = (plain.copy(), with_delay.copy())
        for w in self.weights:
            w[:2] *= slope
        self._last: tuple[float, bool, np.ndarray, list[list[float]]] | None = None

    def inner(self, y: float, delay: bool) -> tuple[np.ndarray, list[list[float]]]:
        """Column weights at √τ_d = y and the centred inner products of the columns (those of the
        fit with the delay term serve the fit without it at the same y: its columns are a subset)."""
        last = self._last
        if last is not None and last[0] == y and (last[1] or not delay):
            return last[2], last[3]
        c = self.weights[delay] * np.exp(self.power * math.log(y))
        q = ((c @ self.gram) @ c.T).tolist()
        self._last = (y, delay, c, q)
        return c, q

    def derivative(self, y: float, delay: bool) -> tuple[float, float]:
        d, curv, _b = _search_terms(self.inner(y, delay)[1], delay)
        return 2.0 * d / y, 4.0 * curv / (y * y)  # in y = √τ_d: dx/dy = 2/y

    def finish(self, y: float, delay: bool) -> tuple[float, float, float, float]:
        """(a, rms residual, delay coefficient b, ‖g − ḡ‖²) at √τ_d = y."""
        c, q = self.inner(y, delay)
        _d, _curv, b = _search_terms(q, delay)
        v = c[4] - c[0] - b * c[2]  # the residual e − m − b·g on the columns
        r = v @ self.rows
        return float(v @ self.means), math.sqrt(float(r @ r) / r.size), b, q[2][2]



class SphereFit:
    """The sphere fit of one window: E(t) = a + slope·θ(t − t₀) + ½·curvature·θ²,
    θ(t) = (τ_d/3)·h(t/τ_d), for τ_d (variable projection: a and the delay term are linear).

    θ is the surface excursion in units of pulse time: the surface stoichiometry is where the mean
    would be after θ seconds of the pulse current. `slope` is dE/dt of the open-circuit potential at
    the pulse start (V/s; the relaxed secant ΔE_s/τ when the OCV is linear) and `curvature` its
    second derivative d²E/dt² at the pulse current (V/s²), so a curved OCV is followed to second
    order. t₀ is the delay of the diffusion response behind the applied current: the double layer
    C_dl in parallel with R_ct + Z_d gives E ∝ √t − 2R_ct·C_dl/√t + const at t ≫ R_ct·C_dl, i.e.
    √(t − t₀) with t₀ = 2·R_ct·C_dl (0.2 s for the hard-carbon cell; uncorrected it reads D 2 % low
    on a 40 s pulse, 5 % with the two-term fit). To first order slope·θ(t − t₀) = slope·θ(t) −
    slope·t₀·θ'(t), a linear term.

    The minimum is where the cost's exact derivative vanishes (`stationary_point`), searched over
    √τ_d, in which θ is nearly linear at short times (θ = (2/3)√(t/π)·√τ_d + t/3 + …), so
    Gauss–Newton steps from a guess within ±50 % land within ~1e-5 at once. A window wholly at
    short times is searched on its power-series columns (`_ShortTimeColumns`), shared by the fits
    with and without the delay term."""

    def __init__(self, t: np.ndarray, e: np.ndarray, slope: float, curvature: float = 0.0) -> None:
        self.t, self.e, self.slope, self.half_k = t, e, slope, 0.5 * curvature
        self.t_lo, self.t_hi = (float(t.min()), float(t.max())) if t.size else (math.nan, math.nan)
        self._series: _ShortTimeColumns | None = None

    def fit(self, delay: bool = True, near: float | None = None) -> tuple[float, float, float, float, float]:
        """τ_d, with the delay term or without it (t₀ = 0). `near`: a τ_d expected within a factor 2
        (a refit), searched there first. Returns (τ_d [s], a [V], rms residual [V], t₀ [s],
        standard error of t₀ [s])."""
        t, slope = self.t, self.slope
        if slope == 0 or t.size < 3:
            return math.nan, math.nan, math.nan, math.nan, math.nan
        y = None
        series = None
        if near is not None and math.isfinite(near) and near > 0:
            y0 = math.sqrt(near)
            lo, hi = y0 * _HALF_DECADE_SQRT ** -1, y0 * _HALF_DECADE_SQRT  # τ_d within ±0.3 decades
            u_max = self.t_hi / (lo * lo)
            if self.half_k == 0.0 and self.t_lo > 0.0 and u_max <= U_SHORT:
                series = self._series
                if series is None or series.u_max < u_max:
                    series = self._series = _ShortTimeColumns(t, self.e, slope, min(2.0 * u_max, U_SHORT))
                y = self._search(lambda v: series.derivative(v, delay), y0, lo, hi, delay)
            else:
                y = self._search(lambda v: self._derivative(v, delay), y0, lo, hi, delay)
            if min(math.log10(y / lo), math.log10(hi / y)) < 0.5e-3:  # ran into the bracket: search the whole range
                y, series = None, None
        if y is None:
            span = float(t.max())
            grid = np.linspace(math.log10(span) - 3.0, math.log10(span) + 7.0, 31)
            sub = np.unique(np.linspace(0, t.size - 1, min(t.size, 200)).astype(np.int64))  # coarse search on a subset
            costs = [self._cost(10.0**g, delay, t[sub], self.e[sub]) for g in grid]
            k = int(np.argmin(costs))
            lo, hi = 10.0 ** (0.5 * grid[max(k - 1, 0)]), 10.0 ** (0.5 * grid[min(k + 1, grid.size - 1)])
            y = self._search(lambda v: self._derivative(v, delay), 10.0 ** (0.5 * grid[k]), lo, hi, delay)
        tau_d = y * y
        if series is not None and series.u_max >= self.t_hi / tau_d:
            a, rms, b, gg = series.finish(y, delay)
        else:
            rc, g, theta = self._parts(t, self.e, tau_d, delay)
            rr, b = _project(rc, g)
            model = slope * theta + self.half_k * theta * theta + (0.0 if g is None else b * g)
            a = float((self.e - model).mean())
            rms = float(np.sqrt((rr**2).mean()))
            gg = 0.0 if g is None else float((g - g.mean()) @ (g - g.mean()))
        if not delay:
            return float(tau_d), a, rms, 0.0, 0.0
        se = rms * math.sqrt(t.size / max(t.size - 3, 1) / gg) / abs(slope) if gg > 0 else math.inf
        return float(tau_d), a, rms, -b / slope, se

    def _search(self, derivative: Callable[[float], tuple[float, float]], y0: float, lo: float, hi: float,
                delay: bool) -> float:
        y = stationary_point(derivative, y0, lo, hi, xtol=1e-12 * y0)
        if y is None:  # a derivative that is not finite: the derivative-free search on the cost
            log_tau = bounded_minimum(lambda v: self._cost(10.0**v, delay), 2.0 * math.log10(lo),
                                      2.0 * math.log10(hi), xtol=1e-10)
            y = 10.0 ** (0.5 * log_tau)
        return y

    def _parts(self, tt: np.ndarray, ee: np.ndarray, tau_d: float,
               delay: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Centred residual of the fixed-τ_d model, the delay column θ'(t) (or None) and θ."""
        u = tt / tau_d
        if self.t_lo > 0.0 and self.t_hi / tau_d <= U_SHORT:  # whole window short: the closed form, unmasked
            h = np.exp(u) * erfc(-np.sqrt(u)) - 1.0
            dh = h + 1.0 + 1.0 / np.sqrt(np.pi * u) if delay else None
        elif delay:
            h, dh, _d2h = sphere_h_derivatives(u)
        else:
            h, dh = sphere_h(u), None
        theta = tau_d / 3.0 * h
        r = ee - (self.slope * theta + self.half_k * theta * theta if self.half_k else self.slope * theta)
        return r - r.sum() / r.size, (None if dh is None else dh / 3.0), theta

    def _cost(self, tau_d: float, delay: bool, tt: np.ndarray | None = None, ee: np.ndarray | None = None) -> float:
        r, g, _theta = self._parts(self.t if tt is None else tt, self.e if ee is None else ee, tau_d, delay)
        r, _b = _project(r, g)
        return float(r @ r)

    def _derivative(self, y: float, delay: bool) -> tuple[float, float]:
        """(d cost/d√τ_d, curvature) from the columns evaluated on the whole window."""
        t, tau_d = self.t, y * y
        u = t / tau_d
        h, dh, d2h = sphere_h_derivatives(u)
        theta = tau_d / 3.0 * h
        g = dh / 3.0
        cols = np.empty((5, t.size))
        cols[0] = self.slope * theta + self.half_k * theta * theta
        cols[1] = (self.slope + 2.0 * self.half_k * theta) * (theta - t * g)  # τ_d ∂θ/∂τ_d = θ − t·θ'(t)
        if delay:
            cols[2] = g
            cols[3] = u * d2h / -3.0
        else:
            cols[2:4] = 0.0
        cols[4] = self.e
        cols -= cols.mean(axis=1, keepdims=True)
        d, curv, _b = _search_terms((cols @ cols.T).tolist(), delay)
        return 2.0 * d / y, 4.0 * curv / (y * y)


_HALF_DECADE_SQRT = 10.0**0.15  # √τ_d factor of ±0.3 decades in τ_d


def _project(r: np.ndarray, g: np.ndarray | None) -> tuple[np.ndarray, float]:
    """r less its least-squares component along the centred g, and that coefficient."""
    if g is None:
        return r, 0.0
    gc = g - g.sum() / g.size
    gg = float(gc @ gc)
    b = float(r @ gc) / gg if gg > 0 else 0.0
    return r - b * gc, b


def fit_sphere(t: np.ndarray, e: np.ndarray, slope: float, curvature: float = 0.0,
               delay: bool = True, near: float | None = None) -> tuple[float, float, float, float, float]:
    """Fit E(t) = a + slope·θ(t − t₀) + ½·curvature·θ², θ(t) = (τ_d/3)·h(t/τ_d), for τ_d
    (`SphereFit`; `delay=False` fixes t₀ = 0). `near`: a τ_d expected within a factor 2 (a refit),
    searched there first. Returns (τ_d [s], a [V], rms residual [V], t₀ [s], standard error of t₀ [s])."""
    return SphereFit(t, e, slope, curvature).fit(delay, near)


def weppner_huggins(tau: float, l_eff: float, de_s: float, de_t: float) -> float:
    """Classic GITT formula D = 4/(πτ) · (m_B V_M/(M_B S))² · (ΔE_s/ΔE_τ)², with the bracket given as
    the effective length L_eff = V/S (m; R_p/3 for spheres). Returns m²/s. Valid for τ ≪ L²/D."""
    if de_t == 0 or tau <= 0:
        return math.nan
    return 4.0 / (math.pi * tau) * l_eff**2 * (de_s / de_t) ** 2


def sqrt_t_diffusion(radius: float, slope: float, sqrt_slope: float) -> float:
    """D = 4/(9π) · R² · ((dE/dt)_eq / (dE/d√t))² (sphere, short-time form). Returns m²/s."""
    if sqrt_slope == 0:
        return math.nan
    return 4.0 / (9.0 * math.pi) * radius**2 * (slope / sqrt_slope) ** 2
