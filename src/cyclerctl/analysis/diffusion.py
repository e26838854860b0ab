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


def sphere_h_and_slope(u: np.ndarray, n_roots: int = N_ROOTS) -> tuple[np.ndarray, np.ndarray]:
    """h(u) and dh/du (u > 0): dh/du = h + 1 + 1/√(πu) at short times, 3 + 2 Σ exp(−λ_n² u) by the
    series (tail by the same integral as h); one exponential table for both."""
    u = np.maximum(np.atleast_1d(np.asarray(u, dtype=np.float64)), 1e-300)
    h = np.empty_like(u)
    dh = np.empty_like(u)
    short = u <= U_SHORT
    if short.any():
        us = u[short]
        h[short] = np.exp(us) * erfc(-np.sqrt(us)) - 1.0
        dh[short] = h[short] + 1.0 + 1.0 / np.sqrt(np.pi * us)
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
    return h, dh


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
    m1, m2, me = x1.mean(), x2.mean(), e.mean()
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
    mx, me = x.mean(), e.mean()
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


def fit_sphere(t: np.ndarray, e: np.ndarray, slope: float, curvature: float = 0.0,
               delay: bool = True, near: float | None = None) -> tuple[float, float, float, float, float]:
    """Fit E(t) = a + slope·θ(t − t₀) + ½·curvature·θ², θ(t) = (τ_d/3)·h(t/τ_d), for τ_d (variable
    projection: a and the delay term are linear).

    θ is the surface excursion in units of pulse time: the surface stoichiometry is where the mean
    would be after θ seconds of the pulse current. `slope` is dE/dt of the open-circuit potential at
    the pulse start (V/s; the relaxed secant ΔE_s/τ when the OCV is linear) and `curvature` its
    second derivative d²E/dt² at the pulse current (V/s²), so a curved OCV is followed to second
    order. t₀ is the delay of the diffusion response behind the applied current: the double layer
    C_dl in parallel with R_ct + Z_d gives E ∝ √t − 2R_ct·C_dl/√t + const at t ≫ R_ct·C_dl, i.e.
    √(t − t₀) with t₀ = 2·R_ct·C_dl (0.2 s for the hard-carbon cell; uncorrected it reads D 2 % low
    on a 40 s pulse, 5 % with the two-term fit). To first order slope·θ(t − t₀) = slope·θ(t) −
    slope·t₀·θ'(t), a linear term; `delay=False` fixes t₀ = 0.
    `near`: a τ_d expected within a factor 2 (a refit), searched there first.
    Returns (τ_d [s], a [V], rms residual [V], t₀ [s], standard error of t₀ [s])."""
    if slope == 0 or t.size < 3:
        return math.nan, math.nan, math.nan, math.nan, math.nan
    half_k = 0.5 * curvature
    t_lo, t_hi = float(t.min()), float(t.max())  # a subset lies within: its u range does too

    def parts(tt: np.ndarray, ee: np.ndarray, tau_d: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Centred residual of the fixed-τ_d model, the delay column θ'(t)·… (or None) and θ."""
        u = tt / tau_d
        if t_lo > 0.0 and t_hi / tau_d <= U_SHORT:  # whole window short: sphere_h's closed form, unmasked
            h = np.exp(u) * erfc(-np.sqrt(u)) - 1.0
            dh = h + 1.0 + 1.0 / np.sqrt(np.pi * u) if delay else None
        elif delay:
            h, dh = sphere_h_and_slope(u)
        else:
            h, dh = sphere_h(u), None
        theta = tau_d / 3.0 * h
        r = ee - (slope * theta + half_k * theta * theta if curvature else slope * theta)
        return r - r.sum() / r.size, (None if dh is None else dh / 3.0), theta

    def project(r: np.ndarray, g: np.ndarray | None) -> tuple[np.ndarray, float]:
        if g is None:
            return r, 0.0
        gc = g - g.sum() / g.size
        gg = float(gc @ gc)
        b = float(r @ gc) / gg if gg > 0 else 0.0
        return r - b * gc, b

    def cost(log_tau: float, tt: np.ndarray = t, ee: np.ndarray = e) -> float:
        r, g, _theta = parts(tt, ee, 10.0**log_tau)
        r, _b = project(r, g)
        return float(r @ r)

    res = None
    if near is not None and math.isfinite(near) and near > 0:
        lo, hi = math.log10(near) - 0.3, math.log10(near) + 0.3
        res = bounded_minimum(cost, lo, hi, xtol=1e-10)
        if min(res - lo, hi - res) < 1e-3:  # ran into the bracket: search the whole range
            res = None
    if res is None:
        span = float(t.max())
        grid = np.linspace(math.log10(span) - 3.0, math.log10(span) + 7.0, 31)
        sub = np.unique(np.linspace(0, t.size - 1, min(t.size, 200)).astype(np.int64))  # coarse search on a subset
        costs = [cost(g, t[sub], e[sub]) for g in grid]
        k = int(np.argmin(costs))
        lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
        res = bounded_minimum(cost, lo, hi, xtol=1e-10)
    tau_d = 10.0**res
    rc, g, theta = parts(t, e, tau_d)  # θ as sphere_h(t/τ_d)·τ_d/3 gives it (the same closed form or series)
    rr, b = project(rc, g)
    model = slope * theta + half_k * theta * theta + (0.0 if g is None else b * g)
    a = float((e - model).mean())
    rms = float(np.sqrt((rr**2).mean()))
    if g is None:
        return float(tau_d), a, rms, 0.0, 0.0
    gc = g - g.mean()
    se = rms * math.sqrt(t.size / max(t.size - 3, 1) / float(gc @ gc)) / abs(slope)
    return float(tau_d), a, rms, -b / slope, se


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
