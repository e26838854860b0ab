"""Compiled evaluation of an equivalent circuit (numba): Z and ∂Z/∂p at every frequency, and the
modulus-weighted CNLS residuals with their Jacobian in ln p, in one call.

A circuit is a postfix program of rows (op, a): an element op (R … Sph) with `a` its first parameter
index pushes (Z, its parameter range); SERIES / PARALLEL with `a` = number of operands pops them and
pushes Σ Z_i, or Z = 1/Σ(1/Z_i) with the rows of branch i scaled by ∂Z/∂Z_i = (Z/Z_i)². Series
leaves the derivatives of its operands as they are. One frequency at a time, complex scalars only.
"""

from __future__ import annotations

import cmath
import math

import numpy as np
from numba import njit

R, C, L, CPE, W, WO, WS, SPH = range(8)
SERIES, PARALLEL = 8, 9
KIND_CODE = {"R": R, "C": C, "L": L, "CPE": CPE, "W": W, "Wo": WO, "Ws": WS, "Sph": SPH}
N_PARAMS = np.array([1, 1, 1, 2, 1, 2, 2, 2], dtype=np.int64)  # parameters per element op


@njit(cache=True, error_model="numpy", inline="always")
def _inv(z: complex) -> complex:
    """1/z as conj(z)/|z|² (one real division); NaN where |z|² is 0 or underflows (a trial step far
    out: caught as a non-finite residual)."""
    den = z.real * z.real + z.imag * z.imag
    if den == 0.0:
        return complex(math.nan, math.nan)
    return complex(z.real / den, -z.imag / den)


@njit(cache=True, error_model="numpy")
def _diffusion_shape(kind: int, s: complex) -> tuple[complex, complex]:
    """g(s) and dg/ds of the finite-diffusion elements, Z = A·g(√(jωτ)):
    Wo coth s/s, Ws tanh s/s, Sph tanh s/(s − tanh s) (for |s| < 10^-2 its series 3/s² + 1/5).
    tanh s = (1 − e^{−2s})/(1 + e^{−2s}) (Re s > 0), exactly 1 in double precision for Re s > 20
    (|e^{−2s}| < 5e-18): most of a spectrum, where ωτ ≫ 1."""
    if kind == SPH and abs(s) < 1e-2:
        i2 = _inv(s * s)
        return 3.0 * i2 + 0.2, -6.0 * i2 * _inv(s)
    if s.real > 20.0:
        th = 1.0 + 0j
    else:
        e = cmath.exp(-2.0 * s)
        th = (1.0 - e) * _inv(1.0 + e)
    sech2 = 1.0 - th * th
    if kind == WO:
        g = _inv(s * th)
        return g, -(th + s * sech2) * g * g
    if kind == WS:
        i1 = _inv(s)
        return th * i1, (s * sech2 - th) * i1 * i1
    i1 = _inv(s - th)
    return th * i1, (s * sech2 - th) * i1 * i1


@njit(cache=True, error_model="numpy")
def impedance_into(program: np.ndarray, w: np.ndarray, p: np.ndarray, z: np.ndarray, dz: np.ndarray) -> None:
    """Z (into `z`, one per angular frequency `w`) and ∂Z/∂p (into `dz`, parameter × frequency).
    One op at a time over every frequency (the op decoded once, each loop over contiguous rows);
    at each frequency the arithmetic is that of a frequency-at-a-time pass, in the same order."""
    n_ops = program.shape[0]
    nw = w.size
    zs = np.empty((n_ops, nw), dtype=np.complex128)  # the operand stack, one row per entry
    ys = np.empty((n_ops, nw), dtype=np.complex128)
    ysum = np.empty(nw, dtype=np.complex128)
    los = np.empty(n_ops, dtype=np.int64)
    his = np.empty(n_ops, dtype=np.int64)
    half_pi = 0.5 * math.pi
    sp = 0
    for o in range(n_ops):
        op = program[o, 0]
        a = program[o, 1]
        if op == SERIES or op == PARALLEL:
            base = sp - a
            zt = zs[base]  # the result goes where the first operand was
            if op == SERIES:
                for k in range(nw):
                    acc = 0j
                    for i in range(base, sp):
                        acc += zs[i, k]
                    zt[k] = acc
            else:
                for k in range(nw):
                    y = 0j
                    for i in range(base, sp):
                        yi = _inv(zs[i, k])
                        ys[i, k] = yi
                        y += yi
                    ysum[k] = _inv(y)
                for i in range(base, sp):
                    for k in range(nw):
                        f = ysum[k] * ys[i, k]
                        ys[i, k] = f * f
                    for q in range(los[i], his[i]):
                        row = dz[q]
                        for k in range(nw):
                            row[k] *= ys[i, k]
                for k in range(nw):
                    zt[k] = ysum[k]
            lo, hi = los[base], his[sp - 1]
            sp = base
        else:
            lo, hi = a, a + N_PARAMS[op]
            v = p[a]
            zt = zs[sp]
            d0 = dz[a]
            if op == R:
                for k in range(nw):
                    zt[k] = v + 0j
                    d0[k] = 1.0
            elif op == C:  # 1/(jωC) = −j/(ωC)
                for k in range(nw):
                    wc = w[k] * v
                    zt[k] = complex(0.0, -1.0 / wc)
                    d0[k] = complex(0.0, 1.0 / (wc * v))
            elif op == L:
                for k in range(nw):
                    zt[k] = complex(0.0, w[k] * v)
                    d0[k] = complex(0.0, w[k])
            elif op == CPE:  # 1/(Q (jω)^α), ln jω = ln ω + jπ/2
                d1 = dz[a + 1]
                iv = 1.0 / v  # real division: inf for Q = 0 (a complex one would raise)
                for k in range(nw):
                    lj = complex(math.log(w[k]), half_pi)
                    zk = cmath.exp(-p[a + 1] * lj) * iv
                    zt[k] = zk
                    d0[k] = -zk * iv
                    d1[k] = -zk * lj
            elif op == W:
                for k in range(nw):
                    wb = (1.0 - 1j) / math.sqrt(w[k])
                    zt[k] = v * wb
                    d0[k] = wb
            else:
                d1 = dz[a + 1]
                tau = p[a + 1]
                # ds/dτ = s/(2τ); the real reciprocal is inf where τ underflowed to 0 (a trial
                # step far out), where a complex division would raise
                half_inv_tau = 0.5 / tau
                for k in range(nw):
                    q = math.sqrt(0.5 * w[k] * tau)
                    s = complex(q, q)  # √(jωτ)
                    g, dg = _diffusion_shape(op, s)
                    zt[k] = v * g
                    d0[k] = g
                    d1[k] = v * dg * s * half_inv_tau
        los[sp] = lo
        his[sp] = hi
        sp += 1
    for k in range(nw):
        z[k] = zs[0, k]


@njit(cache=True, error_model="numpy")
def residuals_into(program: np.ndarray, w: np.ndarray, x: np.ndarray, is_alpha: np.ndarray, z_data: np.ndarray,
                   inv_w: np.ndarray, dz: np.ndarray, r: np.ndarray, jac: np.ndarray) -> None:
    """Modulus-weighted residuals (Z_model − Z)/|Z| at x = ln p (CPE α itself), Re and Im interleaved
    into `r`, and ∂r/∂x into `jac` (one row per variable). A non-finite residual (a trial step far out)
    becomes 10^6 with zero derivative; other non-finite derivatives become 0."""
    n = x.size
    p = np.empty(n)
    dp = np.empty(n)  # ∂p/∂x
    for i in range(n):
        if is_alpha[i]:
            p[i] = x[i]
            dp[i] = 1.0
        else:
            p[i] = math.exp(x[i])
            dp[i] = p[i]
    nw = w.size
    z = np.empty(nw, dtype=np.complex128)
    impedance_into(program, w, p, z, dz)
    re_ok = np.empty(nw, dtype=np.bool_)
    im_ok = np.empty(nw, dtype=np.bool_)
    for k in range(nw):
        d = (z[k] - z_data[k]) * inv_w[k]
        re_ok[k], im_ok[k] = math.isfinite(d.real), math.isfinite(d.imag)
        r[2 * k] = d.real if re_ok[k] else 1e6
        r[2 * k + 1] = d.imag if im_ok[k] else 1e6
    for i in range(n):  # one row of J at a time
        row, dzi, dpi = jac[i], dz[i], dp[i]
        for k in range(nw):
            v = dzi[k] * (dpi * inv_w[k])
            row[2 * k] = v.real if re_ok[k] and math.isfinite(v.real) else 0.0
            row[2 * k + 1] = v.imag if im_ok[k] and math.isfinite(v.imag) else 0.0


@njit(cache=True, error_model="numpy")
def _cholesky_solve(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
    """Solve a·out = b for symmetric positive definite `a` (n small) by Cholesky; False if not positive
    definite. `a` is overwritten with its factor."""
    n = b.size
    for j in range(n):
        s = a[j, j]
        for k in range(j):
            s -= a[j, k] * a[j, k]
        if not s > 0.0:
            return False
        a[j, j] = math.sqrt(s)
        for i in range(j + 1, n):
            s = a[i, j]
            for k in range(j):
                s -= a[i, k] * a[j, k]
            a[i, j] = s / a[j, j]
    for i in range(n):
        s = b[i]
        for k in range(i):
            s -= a[i, k] * out[k]
        out[i] = s / a[i, i]
    for i in range(n - 1, -1, -1):
        s = out[i]
        for k in range(i + 1, n):
            s -= a[k, i] * out[k]
        out[i] = s / a[i, i]
    return True


@njit(cache=True, error_model="numpy")
def _normal_equations(jac: np.ndarray, r: np.ndarray, a: np.ndarray, g: np.ndarray) -> None:
    """a = J·Jᵀ and g = J·r for the Jacobian `jac` stored one row per variable. Four sums at a time
    over k (independent chains, each summed in order of k, as one at a time would)."""
    n, m = jac.shape
    for i in range(n):  # row i against r (j = -1) and rows 0..i, four of them per pass over k
        j = -1
        while j < i + 1:
            j0, j1, j2, j3 = j, j + 1, j + 2, j + 3
            s0 = s1 = s2 = s3 = 0.0
            for k in range(m):
                jik = jac[i, k]
                s0 += jik * (r[k] if j0 < 0 else jac[j0, k])
                if j1 <= i:
                    s1 += jik * jac[j1, k]
                if j2 <= i:
                    s2 += jik * jac[j2, k]
                if j3 <= i:
                    s3 += jik * jac[j3, k]
            for jj, sv in ((j0, s0), (j1, s1), (j2, s2), (j3, s3)):
                if jj < 0:
                    g[i] = sv
                elif jj <= i:
                    a[i, jj] = sv
                    a[jj, i] = sv
            j += 4


@njit(cache=True, error_model="numpy")
def _forward(low: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = L⁻¹b for the Cholesky factor L in the lower triangle of `low`."""
    for i in range(b.size):
        s = b[i]
        for k in range(i):
            s -= low[i, k] * out[k]
        out[i] = s / low[i, i]


@njit(cache=True, error_model="numpy")
def _damped_step(a: np.ndarray, g: np.ndarray, lam: float, work: np.ndarray, step: np.ndarray) -> bool:
    """step = −(a + λI)⁻¹g by Cholesky (factor left in `work`); False if not positive definite."""
    n = g.size
    for i in range(n):
        for j in range(n):
            work[i, j] = a[i, j]
        work[i, i] += lam
    neg = np.empty(n)
    for i in range(n):
        neg[i] = -g[i]
    return _cholesky_solve(work, neg, step)


@njit(cache=True, error_model="numpy")
def _lm_parameter(a: np.ndarray, g: np.ndarray, delta: float, lam: float, work: np.ndarray,
                  step: np.ndarray) -> float:
    """Moré's Levenberg–Marquardt parameter in scaled variables (unit scaling): λ = 0 if the
    Gauss–Newton step is within 1.1Δ, else λ with ‖step‖ within 10 % of Δ, found by safeguarded Newton
    iterations on φ(λ) = ‖step(λ)‖ − Δ (at most 10) between the bounds λ_l, λ_u. Returns λ; the
    step is left in `step`."""
    n = g.size
    tiny = 2.2250738585072014e-308
    v = np.empty(n)
    u = np.empty(n)
    full_rank = _damped_step(a, g, 0.0, work, step)
    dxnorm = np.linalg.norm(step) if full_rank else math.inf
    fp = dxnorm - delta
    if full_rank and fp <= 0.1 * delta:
        return 0.0
    parl = 0.0
    if full_rank:  # Newton step from λ = 0: a lower bound
        for i in range(n):
            v[i] = step[i] / dxnorm
        _forward(work, v, u)
        parl = fp / delta / np.dot(u, u)
    gnorm = np.linalg.norm(g)
    paru = gnorm / delta
    if paru == 0.0:
        paru = tiny / min(delta, 0.1)
    lam = min(max(lam, parl), paru)
    if lam == 0.0:
        lam = gnorm / dxnorm if full_rank and dxnorm > 0 else 1e-3 * paru
    prev = fp
    for it in range(10):
        if lam == 0.0:
            lam = max(tiny, 1e-3 * paru)
        if not _damped_step(a, g, lam, work, step):
            parl = max(parl, lam)
            lam = max(10.0 * lam, 0.5 * (parl + paru))
            continue
        dxnorm = np.linalg.norm(step)
        fp = dxnorm - delta
        if abs(fp) <= 0.1 * delta or (parl == 0.0 and fp <= prev and prev < 0.0) or it == 9:
            break
        for i in range(n):
            v[i] = step[i] / dxnorm
        _forward(work, v, u)
        parc = fp / delta / np.dot(u, u)
        if fp > 0.0:
            parl = max(parl, lam)
        if fp < 0.0:
            paru = min(paru, lam)
        lam = max(parl, lam + parc)
        prev = fp
    return lam


@njit(cache=True, error_model="numpy")
def levenberg_marquardt(program: np.ndarray, w: np.ndarray, z_data: np.ndarray, inv_w: np.ndarray,
                        is_alpha: np.ndarray, x0: np.ndarray, max_nfev: int, tol: float,
                        r: np.ndarray, jac: np.ndarray) -> tuple[np.ndarray, float, int, int]:
    """Minimise ½‖r(x)‖² (`residuals_into`) from x0 by Moré's trust-region Levenberg–Marquardt (the
    MINPACK lmder scheme, on the normal equations by Cholesky in variables scaled by D, the largest
    column norms of J seen so far; initial radius 100‖Dx₀‖). Stops as lmder does: (1) actual and
    predicted relative reductions of ‖r‖² ≤ `tol`, (2) radius ≤ `tol`·‖Dx‖, (4) the cosine between r
    and every column of J ≤ `tol`, (5) `max_nfev` evaluations (not converged). Returns (x, cost, status,
    evaluations) with r and J at x left in `r` and `jac`."""
    n = x0.size
    m = r.size
    eps = 2.220446049250313e-16
    x = x0.copy()
    xt = np.empty(n)
    rc, jc = np.empty(m), np.empty((n, m))  # at x
    rt, jt = np.empty(m), np.empty((n, m))  # at the trial point
    dz = np.empty((n, w.size), dtype=np.complex128)
    a = np.empty((n, n))
    sa = np.empty((n, n))
    work = np.empty((n, n))
    g = np.empty(n)
    gs = np.empty(n)
    step = np.empty(n)
    d = np.zeros(n)
    residuals_into(program, w, x, is_alpha, z_data, inv_w, dz, rc, jc)
    nfev = 1
    fnorm = math.sqrt(np.dot(rc, rc))
    lam = 0.0
    delta = 0.0
    xnorm = 0.0
    first = True
    status = 0
    while status == 0:
        _normal_equations(jc, rc, a, g)
        gmax = 0.0
        for j in range(n):
            cn = math.sqrt(a[j, j])
            d[j] = max(d[j], cn)
            if cn > 0.0 and fnorm > 0.0:
                gmax = max(gmax, abs(g[j]) / (cn * fnorm))
        for j in range(n):
            if d[j] == 0.0:
                d[j] = 1.0
        if first:
            xnorm = 0.0
            for j in range(n):
                xnorm += (d[j] * x[j]) ** 2
            xnorm = math.sqrt(xnorm)
            delta = 100.0 * xnorm if xnorm > 0.0 else 100.0
        if gmax <= tol:
            status = 4
            break
        for i in range(n):
            for j in range(n):
                sa[i, j] = a[i, j] / (d[i] * d[j])
            gs[i] = g[i] / d[i]
        while True:
            lam = _lm_parameter(sa, gs, delta, lam, work, step)
            pnorm = np.linalg.norm(step)
            if first:
                delta = min(delta, pnorm)
            quad = 0.0  # ‖Jp‖² = stepᵀ·(scaled JᵀJ)·step
            for i in range(n):
                for j in range(n):
                    quad += step[i] * sa[i, j] * step[j]
            for i in range(n):
                xt[i] = x[i] + step[i] / d[i]
            residuals_into(program, w, xt, is_alpha, z_data, inv_w, dz, rt, jt)
            nfev += 1
            fnorm1 = math.sqrt(np.dot(rt, rt))
            actred = 1.0 - (fnorm1 / fnorm) ** 2 if 0.1 * fnorm1 < fnorm else -1.0
            temp1 = math.sqrt(max(quad, 0.0)) / fnorm
            temp2 = math.sqrt(lam) * pnorm / fnorm
            prered = temp1 * temp1 + temp2 * temp2 / 0.5
            dirder = -(temp1 * temp1 + temp2 * temp2)
            ratio = actred / prered if prered != 0.0 else 0.0
            if ratio <= 0.25:
                temp = 0.5 if actred >= 0.0 else 0.5 * dirder / (dirder + 0.5 * actred)
                if 0.1 * fnorm1 >= fnorm or temp < 0.1:
                    temp = 0.1
                delta = temp * min(delta, pnorm / 0.1)
                lam /= temp
            elif lam == 0.0 or ratio >= 0.75:
                delta = pnorm / 0.5
                lam *= 0.5
            accepted = ratio >= 1e-4
            if accepted:
                x, xt = xt, x
                rc, rt = rt, rc
                jc, jt = jt, jc
                fnorm = fnorm1
                xnorm = 0.0
                for j in range(n):
                    xnorm += (d[j] * x[j]) ** 2
                xnorm = math.sqrt(xnorm)
                first = False
            if abs(actred) <= tol and prered <= tol and 0.5 * ratio <= 1.0:
                status = 1
            elif delta <= tol * xnorm or fnorm == 0.0:
                status = 2
            elif nfev >= max_nfev:
                status = 5
            elif delta <= eps * xnorm or (abs(actred) <= eps and prered <= eps and 0.5 * ratio <= 1.0):
                status = 6  # no further improvement possible at machine precision
            if status != 0 or accepted:
                break
    r[:] = rc
    jac[:, :] = jc
    return x, 0.5 * fnorm * fnorm, status, nfev


@njit(cache=True, error_model="numpy")
def randles_profile_into(w: np.ndarray, z_we: np.ndarray, z_total: np.ndarray, c: np.ndarray, r_ct: np.ndarray,
                         sigma: np.ndarray, cost: np.ndarray) -> None:
    """For each trial C_dl in `c`: R_ct and σ of Z = [jωC_dl + 1/(R_ct + σ(1 − j)ω^-½)]^-1 by weighted
    linear least squares on 1/(1/Z − jωC_dl) (weights (|Z/z_f|²/|Z_total|)², the errors mapped back to
    Z), and the cost Σ|Z_model − Z|²/|Z_total|² (circuits.randles_profile)."""
    n = w.size
    u = np.empty(n)  # ω^-½
    y_we = np.empty(n, dtype=np.complex128)  # 1/Z
    z_abs = np.empty(n)
    z_abs2 = np.empty(n)
    for k in range(n):  # what does not depend on C_dl, once
        u[k] = 1.0 / math.sqrt(w[k])
        y_we[k] = _inv(z_we[k])
        z_abs[k] = abs(z_total[k])
        z_abs2[k] = z_total[k].real ** 2 + z_total[k].imag ** 2
    for t in range(c.size):
        s11 = s12 = s22 = b1 = b2 = 0.0
        for k in range(n):
            uk = u[k]
            y = y_we[k] - 1j * w[k] * c[t]  # 1/z_f
            zf = _inv(y)
            q = z_we[k] * y  # Z/z_f
            m2 = q.real * q.real + q.imag * q.imag
            wt = m2 / z_abs[k]
            wt2 = wt * wt
            s11 += wt2
            s12 += wt2 * uk
            s22 += wt2 * 2.0 * uk * uk
            b1 += wt2 * zf.real
            b2 += wt2 * uk * (zf.real - zf.imag)
        det = s11 * s22 - s12 * s12
        rc = (s22 * b1 - s12 * b2) / det
        sg = (s11 * b2 - s12 * b1) / det
        total = 0.0
        for k in range(n):
            zm = _inv(1j * w[k] * c[t] + _inv(rc + sg * (1.0 - 1j) * u[k]))
            d = zm - z_we[k]
            total += (d.real * d.real + d.imag * d.imag) / z_abs2[k]
        r_ct[t] = rc
        sigma[t] = sg
        cost[t] = total
