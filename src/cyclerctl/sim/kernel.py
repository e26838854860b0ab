"""The compiled time stepper of the half-cell model (numba).

One internal step of length h with the cell held at a current or a voltage:
- each material j: modal particle update, exact for a constant faradaic current I_j over the step;
  surface stoichiometry x_s,j = p_j - g_j I_j (affine in I_j);
- shared electrode potential phi: U_j(x_s,j) + eta_j(I_j) = phi for every material (Butler-Volmer,
  alpha = 1/2), double layer C_dl (phi - phi_old)/h treated implicitly;
- the terminal voltage V = phi + eta_Na(I) + I R_s (Na-metal counter electrode, series resistance);
- SEI takes a decaying fraction of the cathodic interface current; active material fades with the
  sodiation throughput (its Na is trapped); an optional internal soft short drains V/R_short;
- Arrhenius factors on D, i0, i0_Na, R_s; the cell follows the chamber with a thermal lag.
The unknowns (I_j, phi) are found by Newton on an arrowhead Jacobian. `run` loops over internal
steps, records samples by the step's record rule, and locates end-condition crossings between
steps by regula falsi, so a voltage cutoff is met to micro-volts.
Everything here is SI. Positive current = desodiation of the working electrode (BDF charge).
Compiled without numba's reference counting (`_nrt=False`) everywhere but `run`, the one function
that allocates (the saved-state scratch): with it, every array handed to an inlined helper or a
row view cost two atomic operations, about a third of the time of a step.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

F_CONST = 96485.33212
R_GAS = 8.314462618

# cell state st[...]
T_CELL, T_CH, T_SET, PHI, I_LAST, Q_SEI, Q_TRAP, Q_SHORT, CYCLES, LAST_DIR, TIME, Q_PASSED, V_LAST = range(13)
N_ST = 13
# per-material state mst[j, ...]
HYST, PSI, NEQ, IJ, FADEF = range(5)
N_MST = 5
# per-material parameters mp[j, ...]
(Q0, RAD, GAP, AS, I0, EA_CT, EA_D, HRATE, FADE_LIN, F1, N1, F2, N2, F3, N3, HAS_HYST) = range(16)
N_MP = 16
# cell parameters cp[...]
(RS, EA_RS, CDL, I0NA, EA_NA, SEI_MAX, SEI_RATE, SEI_SLOW, TREF, TAU_TH, RAMP, SHORT_AFTER,
 R_SHORT, DX_MAX, DV_MAX, H_MAX) = range(16)
N_CP = 16
# step state ss[...]
(S_T0, S_CHARGE, S_REC_T, S_REC_V, S_REC_I, S_FIRST, S_HSUB, S_ANC_T, S_ANC_V, S_SEG_T0, S_STABLE,
 S_TEMP_MODE, S_TEMP_TOL, S_TEMP_FOR, S_DVDT, S_SEG_V0, S_KEEP, S_RECORDED) = range(18)
N_SS = 18
# end-condition quantities (cyclerctl.program.EndQuantity)
Q_STEP_TIME, Q_VOLTAGE, Q_CURRENT, Q_ABS_CURRENT, Q_ABS_CHARGE, Q_DVDT, Q_TEMPERATURE = range(7)
# output columns
C_T, C_V, C_I, C_TEMP, C_STEP_T = range(5)
N_BASE_OUT = 5
# cell truth columns after the base columns, then 7 per material
(TR_PHI, TR_ETA_NA, TR_OHMIC, TR_SEI, TR_TRAP, TR_SHORT, TR_INVENTORY, TR_DL, TR_CYCLES, TR_PASSED) = range(10)
N_TR_CELL = 10
(TM_XBAR, TM_XS, TM_D, TM_U, TM_ETA, TM_DUDX, TM_I) = range(7)
N_TR_MAT = 7
# reasons run() returns
R_END, R_STOP, R_FULL, R_DONE = 0, 1, 2, 3


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _interp(tab, j, b, x):
    """Linear interpolation of the table row tab[j, b] on the uniform grid [0, 1] (linear extrapolation
    outside): value, slope. Indexed in place: a row view would cost two atomic reference counts."""
    g = tab.shape[2] - 1
    y = x * g
    i = int(math.floor(y))
    if i < 0:
        i = 0
    elif i > g - 1:
        i = g - 1
    fr = y - i
    d = tab[j, b, i + 1] - tab[j, b, i]
    return tab[j, b, i] + fr * d, d * g


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _ocv(utab, stab, j, x, hyst, has_hyst):
    """U_j(x), the slope of the interpolant (for Newton) and the analytic dU/dx (for truth and EIS),
    blending the sodiation (0) and desodiation (1) branches by the hysteresis state."""
    if has_hyst != 0.0 and hyst > 1.0 - 1e-12:  # on the desodiation branch
        u1, k1 = _interp(utab, j, 1, x)
        s1, _d = _interp(stab, j, 1, x)
        return u1, k1, s1
    u0, k0 = _interp(utab, j, 0, x)
    s0, _d = _interp(stab, j, 0, x)
    if has_hyst == 0.0 or hyst < -1.0 + 1e-12:
        return u0, k0, s0
    w = 0.5 * (1.0 + hyst)
    u1, k1 = _interp(utab, j, 1, x)
    s1, _d = _interp(stab, j, 1, x)
    return w * u1 + (1.0 - w) * u0, w * k1 + (1.0 - w) * k0, w * s1 + (1.0 - w) * s0


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _ocv_u(utab, j, x, hyst, has_hyst):
    """U_j(x) and the slope of the interpolant (what Newton needs): the U part of `_ocv`."""
    if has_hyst != 0.0 and hyst > 1.0 - 1e-12:
        return _interp(utab, j, 1, x)
    u0, k0 = _interp(utab, j, 0, x)
    if has_hyst == 0.0 or hyst < -1.0 + 1e-12:
        return u0, k0
    w = 0.5 * (1.0 + hyst)
    u1, k1 = _interp(utab, j, 1, x)
    return w * u1 + (1.0 - w) * u0, w * k1 + (1.0 - w) * k0


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _ocv_s(stab, j, x, hyst, has_hyst):
    """The analytic dU/dx of `_ocv` alone (for truth and EIS, once per step)."""
    if has_hyst != 0.0 and hyst > 1.0 - 1e-12:
        return _interp(stab, j, 1, x)[0]
    s0, _d = _interp(stab, j, 0, x)
    if has_hyst == 0.0 or hyst < -1.0 + 1e-12:
        return s0
    w = 0.5 * (1.0 + hyst)
    s1, _d = _interp(stab, j, 1, x)
    return w * s1 + (1.0 - w) * s0


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _arr(ea, t, tref):
    return math.exp(-ea / R_GAS * (1.0 / t - 1.0 / tref))


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _eta(i, i0a, f):
    """Butler-Volmer overpotential (alpha = 1/2) and its derivative d eta / d i. asinh(z) as
    log(|z| + sqrt(1 + z^2)), sharing the root with the derivative: a third of the cost of the
    library asinh (log1p), and within ~1e-16 of it in absolute terms (~1e-17 V in eta)."""
    z = i / (2.0 * i0a)
    s = math.sqrt(1.0 + z * z)
    a = math.log(abs(z) + s)
    return 2.0 / f * (a if z >= 0.0 else -a), 1.0 / (f * i0a * s)


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def diffusivity(dtab, j, xbar):
    """D_j at the mean stoichiometry xbar (reference temperature): the table row dtab[j] on the
    uniform grid [0, 1] interpolated linearly (the preset's D(x), piecewise linear between its
    points, is exact where those lie on the grid), held at the end values outside. Continuous in
    xbar, so D follows the mean smoothly instead of stepping at grid points."""
    nd = dtab.shape[1] - 1
    y = xbar * nd
    if not y > 0.0:  # (a NaN mean takes the first value, as the nearest lookup did)
        return dtab[j, 0]
    if y >= nd:
        return dtab[j, nd]
    k = int(y)
    return dtab[j, k] + (y - k) * (dtab[j, k + 1] - dtab[j, k])


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _prepare(a, st, mst, mp, mu, vs, dtab, cp, h, ex, fx, cache, w):
    """Per material: D, the free surface value p_j and the gain g_j of the step of length h
    (into w[4], w[2], w[3]; the capacity Q_j into w[7])."""
    m, n = a.shape
    t = st[T_CELL]
    tref = cp[TREF]
    for j in range(m):
        q = mp[j, Q0] * mst[j, PSI]
        if cache[j, 4] != t:
            cache[j, 4] = t
            cache[j, 5] = _arr(mp[j, EA_D], t, tref)
            cache[j, 6] = _arr(mp[j, EA_CT], t, tref)
        dd = diffusivity(dtab, j, a[j, 0]) * cache[j, 5]
        fx[j, 0] = h  # the inventory mode is always integrated with the exact h
        # the decaying modes reuse the last exponentials when D and h are unchanged (h to 1e-9 relative:
        # record grids make h differ in the last bits from step to step); a D(x) table changes D with
        # the mean, so those materials refresh them on every step that moves it
        if cache[j, 0] != dd or abs(cache[j, 1] - h) > 1e-9 * h:
            cache[j, 0] = dd
            cache[j, 1] = h
            ex[j, 0] = 1.0
            gs = 0.0
            kact = 1
            for k in range(1, n):
                lam = dd * mu[j, k]
                # below -746 exp is exactly 0 (and the library's underflow path is slow)
                e = math.exp(lam * h) if lam * h > -746.0 else 0.0
                ex[j, k] = e
                fx[j, k] = (e - 1.0) / lam
                gs += vs[j, k] * vs[j, k] * fx[j, k]
                if e > 0.0:
                    kact = k + 1
            cache[j, 2] = gs  # gain of the decaying modes
            cache[j, 3] = kact  # modes beyond this one have decayed completely within h
        p = a[j, 0] * vs[j, 0]
        for k in range(1, int(cache[j, 3])):
            p += vs[j, k] * ex[j, k] * a[j, k]
        g = vs[j, 0] * vs[j, 0] * h + cache[j, 2]
        r = mp[j, RAD]
        w[2, j] = p
        w[3, j] = g / q + mp[j, GAP] * r / (3.0 * q * dd)
        w[4, j] = dd
        w[7, j] = q


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _sei_fraction(st, cp):
    if cp[SEI_MAX] <= 0.0:
        return cp[SEI_SLOW]
    rem = 1.0 - st[Q_SEI] / cp[SEI_MAX]
    if rem < 0.0:
        rem = 0.0
    return cp[SEI_RATE] * rem + cp[SEI_SLOW]


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _short_current(st, cp):
    if cp[SHORT_AFTER] > 0.0 and st[CYCLES] >= cp[SHORT_AFTER]:
        return st[V_LAST] / cp[R_SHORT]
    return 0.0



@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _mat_res(utab, stab, mp, mst, j, p, g, i0a, f, phi, i):
    """Residual U_j(x_s(I)) + eta_j(I) - phi and its slope (> 0) for material j at current I."""
    xs = p - g * i
    u, ku, _du = _ocv(utab, stab, j, xs, mst[j, HYST], mp[j, HAS_HYST])
    e, de = _eta(i, i0a, f)
    return u + e - phi, -g * ku + de


@njit(cache=True, _nrt=False, error_model="numpy")
def _mat_current(utab, stab, mp, mst, j, p, g, i0a, f, phi, guess, scale):
    """The faradaic current of material j at electrode potential phi (the residual is monotone in I):
    expand a bracket from the guess, then Newton kept inside the bracket (bisection otherwise)."""
    lo = -math.inf
    hi = math.inf
    step = scale
    i = guess
    d = 1.0
    for _k in range(400):
        r, d = _mat_res(utab, stab, mp, mst, j, p, g, i0a, f, phi, i)
        if r == 0.0:
            return i, d
        if r > 0.0:
            hi = i
        else:
            lo = i
        if math.isinf(lo) or math.isinf(hi):
            nxt = i - step if r > 0.0 else i + step
            step *= 2.0
        else:
            nxt = i - r / d if d > 0.0 else 0.5 * (lo + hi)
            if not (lo < nxt < hi):
                nxt = 0.5 * (lo + hi)
            if abs(nxt - i) <= 1e-15 * (abs(i) + scale) or hi - lo <= 1e-15 * (abs(i) + scale):
                return nxt, d
        i = nxt
    return i, d


@njit(cache=True, _nrt=False, error_model="numpy")
def _total(utab, stab, mp, mst, pj, gj, i0as, f, phi, ij, scale, cdh, phi_old):
    """Sum of faradaic currents and double-layer current at phi, and its slope."""
    s = cdh * (phi - phi_old)
    ds = cdh
    for j in range(mst.shape[0]):
        i, d = _mat_current(utab, stab, mp, mst, j, pj[j], gj[j], i0as[j], f, phi, ij[j], scale)
        ij[j] = i
        s += i
        ds += 1.0 / d if d > 0.0 else 0.0
    return s, ds


@njit(cache=True, _nrt=False, error_model="numpy")
def _outer(utab, stab, mp, mst, pj, gj, i0as, f, phi_old, ij, scale, cdh, mode, target, eps, ish, rs,
           i0na, phi):
    """The cell-level residual at electrode potential phi (monotone increasing) and its slope."""
    s, ds = _total(utab, stab, mp, mst, pj, gj, i0as, f, phi, ij, scale, cdh, phi_old)
    if mode == 0:
        iint = target - ish
        s_t = iint * (1.0 - eps) if iint < 0.0 else iint
        return s - s_t, ds
    e_s = eps if s < 0.0 else 0.0
    iext = s / (1.0 - e_s) + ish
    en, den = _eta(iext, i0na, f)
    return phi + en + iext * rs - target, 1.0 + (den + rs) / (1.0 - e_s) * ds


@njit(cache=True, _nrt=False, error_model="numpy")
def _solve_bracketed(utab, stab, mp, mst, pj, gj, i0as, f, phi_old, ij, scale, cdh, mode, target,
                     eps, ish, rs, i0na):
    """Robust fallback: safeguarded Newton on phi with inner bracketed solves per material.
    mode 0: the currents add up to the target; mode 1: the terminal voltage is the target.
    Leaves ij at the solution's currents."""
    lo = -math.inf
    hi = math.inf
    step = 0.01
    phi = phi_old
    done = False
    for _k in range(400):
        r, d = _outer(utab, stab, mp, mst, pj, gj, i0as, f, phi_old, ij, scale, cdh, mode, target, eps, ish,
                      rs, i0na, phi)
        if r == 0.0 or done:  # ij now holds the currents at this phi
            return phi
        if r > 0.0:
            hi = phi
        else:
            lo = phi
        if math.isinf(lo) or math.isinf(hi):
            nxt = phi - step if r > 0.0 else phi + step
            step *= 2.0
        else:
            nxt = phi - r / d if d > 0.0 else 0.5 * (lo + hi)
            if not (lo < nxt < hi):
                nxt = 0.5 * (lo + hi)
            if abs(nxt - phi) < 1e-14 or hi - lo < 1e-14:
                done = True
        phi = nxt
    return phi


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def solve(a, st, mst, mp, mu, vs, utab, stab, dtab, cp, h, mode, target, ex, fx, cache, w):
    """Solve one step (not committed). mode 0: current target (A); mode 1: voltage target (V).
    h = 0 evaluates the instantaneous response (double layer holds phi). Returns V, I, phi;
    w[0..3, j] holds I_j, x_s,j, p_j, g_j; w[4..6, j] D_j, U_j, dU/dx_j, w[7, j] Q_j."""
    m = a.shape[0]
    t = st[T_CELL]
    tref = cp[TREF]
    f = F_CONST / (R_GAS * t)
    if cache[0, 7] != t:
        cache[0, 7] = t
        cache[0, 8] = cp[RS] * math.exp(cp[EA_RS] / R_GAS * (1.0 / t - 1.0 / tref))
        cache[0, 9] = cp[I0NA] * _arr(cp[EA_NA], t, tref)
    rs = cache[0, 8]
    i0na = cache[0, 9]
    _prepare(a, st, mst, mp, mu, vs, dtab, cp, h, ex, fx, cache, w)
    eps = _sei_fraction(st, cp)
    ish = _short_current(st, cp)
    phi_old = st[PHI]
    if h <= 0.0:
        # instantaneous: phi cannot jump (double layer); only the ohmic and counter-electrode terms move
        if mode == 0:
            iext = target
        else:
            iext = st[I_LAST]
            for _ in range(60):
                en, den = _eta(iext, i0na, f)
                r = phi_old + en + iext * rs - target
                iext -= r / (den + rs)
                if abs(r) < 1e-12:
                    break
        en, _d = _eta(iext, i0na, f)
        for j in range(m):
            w[0, j] = mst[j, IJ]
            xs = w[2, j] - w[3, j] * mst[j, IJ]
            w[1, j] = xs
            u, _k, du = _ocv(utab, stab, j, xs, mst[j, HYST], mp[j, HAS_HYST])
            w[5, j] = u
            w[6, j] = du
        return phi_old + en + iext * rs, iext, phi_old
    cdh = cp[CDL] / h
    for j in range(m):
        w[0, j] = mst[j, IJ]
        w[11, j] = mp[j, I0] * mp[j, AS] * mst[j, PSI] * cache[j, 6]
    phi = phi_old
    iext = st[I_LAST]
    newton_ok = False
    for _it in range(30):
        s_sum = cdh * (phi - phi_old)
        inv_d = 0.0
        rd = 0.0
        rmax = 0.0
        for j in range(m):
            xs = w[2, j] - w[3, j] * w[0, j]
            u, ku = _ocv_u(utab, j, xs, mst[j, HYST], mp[j, HAS_HYST])
            e, de = _eta(w[0, j], w[11, j], f)
            r = u + e - phi
            d = -w[3, j] * ku + de
            w[1, j] = xs
            w[5, j] = u
            w[8, j] = r
            w[9, j] = d
            inv_d += 1.0 / d
            rd += r / d
            s_sum += w[0, j]
            if abs(r) > rmax:
                rmax = abs(r)
        if mode == 0:
            iint = target - ish
            s_t = iint * (1.0 - eps) if iint < 0.0 else iint
            rt = s_sum - s_t
            dphi = (-rt + rd) / (inv_d + cdh)
            conv = abs(rt) / inv_d < 1e-8
            iext = target
        else:
            e_s = eps if s_sum < 0.0 else 0.0
            iint = s_sum / (1.0 - e_s)
            iext = iint + ish
            en, den = _eta(iext, i0na, f)
            k = (den + rs) / (1.0 - e_s)
            rt = phi + en + iext * rs - target
            dphi = (-rt + k * rd) / (k * inv_d + 1.0 + k * cdh)
            conv = abs(rt) < 1e-8
        if dphi > 0.2:
            dphi = 0.2
        elif dphi < -0.2:
            dphi = -0.2
        phi += dphi
        for j in range(m):
            w[0, j] += (dphi - w[8, j]) / w[9, j]
        # residuals below 1e-8 V before this Newton update leave ~1e-16 V after it (quadratic
        # convergence); the sum of currents is linear and holds exactly after any update
        if conv and rmax < 1e-8 and abs(dphi) < 1e-8:
            newton_ok = True
            break
    w[10, 0] = _it
    w[10, 1] = rmax
    if newton_ok:
        for j in range(m):  # dU/dx where U was last evaluated
            w[6, j] = _ocv_s(stab, j, w[1, j], mst[j, HYST], mp[j, HAS_HYST])
    else:
        pj, gj, ij, i0as = w[2], w[3], w[0], w[11]  # row views (the fallback only)
        for j in range(m):
            ij[j] = mst[j, IJ]
        scale = abs(target) if mode == 0 else abs(st[I_LAST])
        for j in range(m):
            scale += i0as[j]
        phi = _solve_bracketed(utab, stab, mp, mst, pj, gj, i0as, f, phi_old, ij, scale * 1e-3, cdh, mode,
                               target, eps, ish, rs, i0na)
        w[10, 0] = -1.0
        # the values that go with the bracketed solution
        for j in range(m):
            xs = pj[j] - gj[j] * ij[j]
            u, _k, du = _ocv(utab, stab, j, xs, mst[j, HYST], mp[j, HAS_HYST])
            w[1, j] = xs
            w[5, j] = u
            w[6, j] = du
    s_sum = cdh * (phi - phi_old)
    for j in range(m):
        s_sum += w[0, j]
    if mode == 1:
        e_s = eps if s_sum < 0.0 else 0.0
        iext = s_sum / (1.0 - e_s) + ish
    en, _d = _eta(iext, i0na, f)
    return phi + en + iext * rs, iext, phi


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _fade(mp, j, n):
    """Active fraction left after n equivalent cycles of sodiation throughput."""
    lost = 0.0
    for kf, kn in ((F1, N1), (F2, N2), (F3, N3)):
        if mp[j, kf] != 0.0:
            lost += mp[j, kf] * (1.0 - math.exp(-n / mp[j, kn]))
    return max((1.0 - mp[j, FADE_LIN] * n) * (1.0 - lost), 1e-6)


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def commit(a, st, mst, mp, vs, cp, h, v, iext, phi, ex, fx, w):
    """Apply a solved step of length h > 0 to the state."""
    m, n = a.shape
    eps = _sei_fraction(st, cp)
    ish = _short_current(st, cp)
    iint = iext - ish
    for j in range(m):
        q = w[7, j]
        ij = w[0, j]
        u = -ij / q
        for k in range(n):
            a[j, k] = ex[j, k] * a[j, k] + fx[j, k] * vs[j, k] * u
        if mp[j, HAS_HYST] != 0.0 and ij != 0.0:
            s = 1.0 if ij > 0.0 else -1.0
            mst[j, HYST] = s + (mst[j, HYST] - s) * math.exp(-mp[j, HRATE] * abs(ij) * h / q)
        if ij < 0.0 and mp[j, FADE_LIN] + mp[j, F1] + mp[j, F2] + mp[j, F3] > 0.0:
            n_new = mst[j, NEQ] - ij * h / mp[j, Q0]
            p_old = mst[j, FADEF]
            p_new = _fade(mp, j, n_new)
            mst[j, NEQ] = n_new
            mst[j, FADEF] = p_new
            mst[j, PSI] = mst[j, PSI] * p_new / p_old
            st[Q_TRAP] += mp[j, Q0] * mst[j, PSI] * (p_old / p_new - 1.0) * a[j, 0]
        mst[j, IJ] = ij
    if iint < 0.0:
        st[Q_SEI] += -eps * iint * h
    st[Q_SHORT] += ish * h
    st[PHI] = phi
    st[I_LAST] = iext
    st[V_LAST] = v
    st[Q_PASSED] += iext * h
    st[TIME] += h
    if iext != 0.0:
        d = 1.0 if iext > 0.0 else -1.0
        if d < 0.0 and st[LAST_DIR] > 0.0:
            st[CYCLES] += 1.0
        st[LAST_DIR] = d
    # chamber ramps to its set point; the cell follows with a first-order lag
    dt_ch = st[T_SET] - st[T_CH]
    lim = cp[RAMP] * h
    if dt_ch > lim:
        dt_ch = lim
    elif dt_ch < -lim:
        dt_ch = -lim
    st[T_CH] += dt_ch
    if st[T_CELL] != st[T_CH]:
        st[T_CELL] = st[T_CH] + (st[T_CELL] - st[T_CH]) * math.exp(-h / cp[TAU_TH])


@njit(cache=True, _nrt=False, error_model="numpy")
def inventory(a, st, mst, mp):
    """Na held by the working electrode (C): in the particles, trapped in faded material, and in SEI."""
    tot = st[Q_TRAP] + st[Q_SEI]
    for j in range(a.shape[0]):
        tot += mp[j, Q0] * mst[j, PSI] * a[j, 0]
    return tot


@njit(cache=True, _nrt=False, error_model="numpy")
def _write(out, row, a, st, mst, mp, cp, w, v, iext, phi, step_time):
    m = a.shape[0]
    t = st[T_CELL]
    tref = cp[TREF]
    f = F_CONST / (R_GAS * t)
    rs = cp[RS] * math.exp(cp[EA_RS] / R_GAS * (1.0 / t - 1.0 / tref)) if cp[EA_RS] != 0.0 else cp[RS]
    i0na = cp[I0NA] * _arr(cp[EA_NA], t, tref) if cp[EA_NA] != 0.0 else cp[I0NA]
    en, _d = _eta(iext, i0na, f)
    out[row, C_T] = st[TIME]
    out[row, C_V] = v
    out[row, C_I] = iext
    out[row, C_TEMP] = t
    out[row, C_STEP_T] = step_time
    b = N_BASE_OUT
    out[row, b + TR_PHI] = phi
    out[row, b + TR_ETA_NA] = en
    out[row, b + TR_OHMIC] = iext * rs
    out[row, b + TR_SEI] = st[Q_SEI]
    out[row, b + TR_TRAP] = st[Q_TRAP]
    out[row, b + TR_SHORT] = st[Q_SHORT]
    out[row, b + TR_INVENTORY] = inventory(a, st, mst, mp)
    out[row, b + TR_DL] = cp[CDL] * st[PHI]
    out[row, b + TR_CYCLES] = st[CYCLES]
    out[row, b + TR_PASSED] = st[Q_PASSED]
    for j in range(m):
        c = b + N_TR_CELL + N_TR_MAT * j
        out[row, c + TM_XBAR] = a[j, 0]
        out[row, c + TM_XS] = w[1, j]
        out[row, c + TM_D] = w[4, j]
        out[row, c + TM_U] = w[5, j]
        out[row, c + TM_ETA] = phi - w[5, j]
        out[row, c + TM_DUDX] = w[6, j]
        out[row, c + TM_I] = w[0, j]


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _quantity(code, ss, st, v, iext):
    if code == Q_STEP_TIME:
        return st[TIME] - ss[S_T0]
    if code == Q_VOLTAGE:
        return v
    if code == Q_CURRENT:
        return iext
    if code == Q_ABS_CURRENT:
        return abs(iext)
    if code == Q_ABS_CHARGE:
        return abs(ss[S_CHARGE])
    if code == Q_TEMPERATURE:
        return st[T_CELL]
    return ss[S_DVDT]


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _target(mode, target, rate, ss, t):
    if rate != 0.0:
        return ss[S_SEG_V0] + rate * (t - ss[S_SEG_T0])
    return target


@njit(cache=True, _nrt=False, error_model="numpy")
def _eval(a, st, mst, mp, mu, vs, utab, stab, dtab, cp, h, mode, tv, ilimit, ex, fx, cache, w):
    """Solve a step of length h (not committed) under a current or a voltage with current compliance.
    The one compiled copy of the step solve (the stepper, the instantaneous evaluations, callers
    outside): inlining it into the stepper as well would be ~7 % faster but triple its compile time."""
    md = 0 if mode == 0 else 1
    v, iext, phi = 0.0, 0.0, 0.0
    for _k in range(2):  # a voltage whose current would pass the compliance becomes a current step
        v, iext, phi = solve(a, st, mst, mp, mu, vs, utab, stab, dtab, cp, h, md, tv, ex, fx, cache, w)
        if md == 1 and abs(iext) > ilimit:
            md = 0
            tv = ilimit if iext > 0.0 else -ilimit
        else:
            break
    return v, iext, phi


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _do_step(a, st, mst, mp, mu, vs, utab, stab, dtab, cp, h, mode, target, rate, ilimit, ss,
             ex, fx, cache, w):
    tv = _target(mode, target, rate, ss, st[TIME] + h)
    v, iext, phi = _eval(a, st, mst, mp, mu, vs, utab, stab, dtab, cp, h, mode, tv, ilimit, ex, fx, cache, w)
    ss[S_CHARGE] += iext * h
    commit(a, st, mst, mp, vs, cp, h, v, iext, phi, ex, fx, w)
    return v, iext, phi


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _copy(a_to, a_from, st_to, st_from, mst_to, mst_from, ss_to, ss_from):
    for j in range(a_to.shape[0]):
        for k in range(a_to.shape[1]):
            a_to[j, k] = a_from[j, k]
        for k in range(mst_to.shape[1]):
            mst_to[j, k] = mst_from[j, k]
    for k in range(st_to.shape[0]):
        st_to[k] = st_from[k]
    for k in range(ss_to.shape[0]):
        ss_to[k] = ss_from[k]


@njit(cache=True, error_model="numpy")
def run(a, st, mst, mp, mu, vs, utab, stab, dtab, cp, ss, mode, target, rate, ilimit, t_stop,
        rec_every, rec_dv, rec_di, e_code, e_op, e_val, e_win, out, ex, fx, cache, w):
    """Advance until an end fires (R_END), t_stop (R_STOP), out is full (R_FULL) or a temperature
    step has settled (R_DONE). Returns (samples written, end index or -1, reason)."""
    return _run(a, st, mst, mp, mu, vs, utab, stab, dtab, cp, ss, mode, target, rate, ilimit, t_stop,
                rec_every, rec_dv, rec_di, e_code, e_op, e_val, e_win, out, ex, fx, cache, w,
                np.empty_like(a), np.empty_like(st), np.empty_like(mst), np.empty_like(ss))


@njit(cache=True, _nrt=False, error_model="numpy")
def _run(a, st, mst, mp, mu, vs, utab, stab, dtab, cp, ss, mode, target, rate, ilimit, t_stop,
         rec_every, rec_dv, rec_di, e_code, e_op, e_val, e_win, out, ex, fx, cache, w, a0, st0, mst0, ss0):
    """`run` on the saved-state scratch a0, st0, mst0, ss0 (no allocation, no reference counting)."""
    m, n_modes = a.shape
    n_out = 0
    n_ends = e_code.shape[0]
    if ss[S_FIRST] != 0.0:
        ss[S_FIRST] = 0.0
        tv = _target(mode, target, rate, ss, st[TIME])
        v, iext, phi = _eval(a, st, mst, mp, mu, vs, utab, stab, dtab, cp, 0.0, mode, tv, ilimit, ex, fx, cache, w)
        _write(out, 0, a, st, mst, mp, cp, w, v, iext, phi, st[TIME] - ss[S_T0])
        n_out = 1
        ss[S_RECORDED] = 1.0
        if ss[S_KEEP] == 0.0:  # a fresh step: the record rule and dV/dt window start here
            ss[S_REC_T] = st[TIME]
            ss[S_REC_V] = v
            ss[S_REC_I] = iext
            ss[S_ANC_T] = st[TIME]
            ss[S_ANC_V] = v
            st[V_LAST] = v
        ss[S_KEEP] = 0.0
        # an end that already holds at the first sample ends the step at once (e.g. charge to 2 V at 2.1 V)
        for e in range(n_ends):
            if e_code[e] == Q_VOLTAGE or e_code[e] == Q_TEMPERATURE:
                x = _quantity(e_code[e], ss, st, v, iext)
                if (e_op[e] > 0 and x >= e_val[e]) or (e_op[e] < 0 and x <= e_val[e]):
                    return n_out, e, R_END
    v_prev = st[V_LAST]
    i_prev = st[I_LAST]
    slope = 0.0
    while True:
        t = st[TIME]
        if t >= t_stop - 1e-9:
            # a block ends on a sample: record the present state unless it was just recorded
            if ss[S_RECORDED] == 0.0 and n_out < out.shape[0]:
                v, iext, phi = _eval(a, st, mst, mp, mu, vs, utab, stab, dtab, cp, 0.0, 0, st[I_LAST], math.inf,
                                     ex, fx, cache, w)
                v = st[V_LAST]
                _write(out, n_out, a, st, mst, mp, cp, w, v, iext, phi, st[TIME] - ss[S_T0])
                n_out += 1
                ss[S_REC_T] = st[TIME]
                ss[S_REC_V] = v
                ss[S_REC_I] = iext
                ss[S_RECORDED] = 1.0
            return n_out, -1, R_STOP
        if n_out >= out.shape[0] - 1:
            return n_out, -1, R_FULL
        h = min(ss[S_HSUB], cp[H_MAX], t_stop - t)
        if rec_every > 0.0:
            hr = ss[S_REC_T] + rec_every - t
            if hr > 1e-9:
                h = min(h, hr)
        # each material's stoichiometry moves at most DX_MAX per step (by its own last current)
        for j in range(m):
            ia = abs(mst[j, IJ])
            if mode == 0 and m == 1:
                ia = max(ia, abs(target))
            if ia > 0.0:
                h = min(h, cp[DX_MAX] * mp[j, Q0] * mst[j, PSI] / ia)
        if rate != 0.0:
            h = min(h, cp[DV_MAX] / abs(rate))
        if rec_dv > 0.0 and slope > 0.0:
            h = max(min(h, 0.5 * rec_dv / slope), 1e-3)  # a voltage-change record lands within 1.5 dV
        for e in range(n_ends):
            if e_code[e] == Q_STEP_TIME:
                hr = e_val[e] - (t - ss[S_T0])
                if hr > 1e-9:
                    h = min(h, hr)
        if ss[S_TEMP_MODE] != 0.0:
            h = min(h, max(ss[S_TEMP_FOR] / 20.0, 1e-3))
        if h < 1e-9:
            h = 1e-9
        _copy(a0, a, st0, st, mst0, mst, ss0, ss)
        # one step, then (if an end fired inside it) regula falsi (Illinois) on the step length to
        # locate the crossing: every trial restarts from the saved state; the accepted trial stays
        fired = -1
        code = 0
        f0 = 0.0
        f1 = 0.0
        lo = 0.0
        hi = h
        side = 0
        h_try = h
        v, iext, phi = 0.0, 0.0, 0.0
        dvdt_ready = False
        for trial in range(82):
            if trial > 0:
                _copy(a, a0, st, st0, mst, mst0, ss, ss0)
            v, iext, phi = _do_step(a, st, mst, mp, mu, vs, utab, stab, dtab, cp, h_try, mode, target, rate,
                                    ilimit, ss, ex, fx, cache, w)
            if trial == 0:
                # |dV/dt| over the trailing window (or between internal steps)
                if st[TIME] - ss[S_ANC_T] >= e_win_max(e_win) - 1e-9:
                    ss[S_DVDT] = abs(v - ss[S_ANC_V]) / max(st[TIME] - ss[S_ANC_T], 1e-12)
                    ss[S_ANC_T] = st[TIME]
                    ss[S_ANC_V] = v
                    dvdt_ready = True
                # which end fired first (by the linear estimate of the crossing inside the step)
                best = 2.0
                for e in range(n_ends):
                    c = e_code[e]
                    if c == Q_DVDT and not dvdt_ready:
                        continue
                    x1 = _quantity(c, ss, st, v, iext)
                    if not ((e_op[e] > 0 and x1 >= e_val[e]) or (e_op[e] < 0 and x1 <= e_val[e])):
                        continue
                    if c == Q_STEP_TIME or c == Q_DVDT:
                        frac = 1.0
                        g0 = 0.0
                    else:
                        if c == Q_VOLTAGE:
                            x0 = v_prev
                        elif c == Q_CURRENT:
                            x0 = i_prev
                        elif c == Q_ABS_CURRENT:
                            x0 = abs(i_prev)
                        elif c == Q_ABS_CHARGE:
                            x0 = abs(ss0[S_CHARGE])
                        else:
                            x0 = st0[T_CELL]
                        g0 = x0 - e_val[e]
                        g1 = x1 - e_val[e]
                        frac = 1.0 if g0 * g1 > 0.0 or g0 == g1 else g0 / (g0 - g1)
                    if frac < best:
                        best = frac
                        fired = e
                        code = c
                        f0 = g0
                        f1 = x1 - e_val[e]
                if fired < 0 or code == Q_STEP_TIME or code == Q_DVDT or f0 * f1 > 0.0:
                    break  # nothing fired, or it fired at the step's end, or it already held at its start
            else:
                fm = _quantity(code, ss, st, v, iext) - e_val[fired]
                tol = 1e-5 if code == Q_VOLTAGE or code == Q_TEMPERATURE else 1e-7 * abs(e_val[fired]) + 1e-15
                if abs(fm) < tol or hi - lo < 1e-9:
                    break
                if fm * f1 > 0.0:
                    hi = h_try
                    f1 = fm
                    if side == 1:
                        f0 *= 0.5
                    side = 1
                else:
                    lo = h_try
                    f0 = fm
                    if side == -1:
                        f1 *= 0.5
                    side = -1
            hm = (lo * f1 - hi * f0) / (f1 - f0) if f1 != f0 else 0.5 * (lo + hi)
            if not (lo < hm < hi):
                hm = 0.5 * (lo + hi)
            h_try = hm
        slope = abs(v - v_prev) / max(st[TIME] - st0[TIME], 1e-12)
        # sub-steps grow geometrically after a setpoint change. Where the transient is observed (a
        # record, a voltage/current-change record or the end of this call within DL_WATCH double-layer
        # time constants C_dl R_ct of the change) they stay below DL_FRACTION of it for DL_SPAN of them:
        # implicit Euler on the stiff double layer with h >> C_dl R_ct decays its transient far too
        # slowly (1 % of the current still in the double layer at 1 s). Unobserved, the transient has
        # decayed to < 1e-6 within a few seconds either way and the charge bookkeeping is exact.
        h_next = 4.0 * ss0[S_HSUB]
        if cp[CDL] > 0.0 and ss0[S_HSUB] < cp[H_MAX]:
            t_dl = _double_layer_time(mst, cp, w, st[T_CELL])
            t_step = st[TIME] - ss[S_T0]
            if t_step < DL_SPAN * t_dl and (rec_dv > 0.0 or rec_di > 0.0 or t_stop - ss[S_T0] < DL_WATCH * t_dl
                                            or 0.0 < rec_every < DL_WATCH * t_dl):
                h_next = max(min(h_next, DL_FRACTION * t_dl), ss0[S_HSUB])
        ss[S_HSUB] = min(h_next, cp[H_MAX])
        if fired >= 0:
            _write(out, n_out, a, st, mst, mp, cp, w, v, iext, phi, st[TIME] - ss[S_T0])
            return n_out + 1, fired, R_END
        rec = False
        if rec_every > 0.0 and st[TIME] >= ss[S_REC_T] + rec_every - 1e-9:
            rec = True
        if rec_dv > 0.0 and abs(v - ss[S_REC_V]) >= rec_dv:
            rec = True
        if rec_di > 0.0 and abs(iext - ss[S_REC_I]) >= rec_di:
            rec = True
        done = False
        if ss[S_TEMP_MODE] != 0.0:
            if abs(st[T_CELL] - st[T_SET]) <= ss[S_TEMP_TOL]:
                if ss[S_STABLE] < 0.0:
                    ss[S_STABLE] = st[TIME]
                elif st[TIME] - ss[S_STABLE] >= ss[S_TEMP_FOR] - 1e-9:
                    done = True
            else:
                ss[S_STABLE] = -1.0
        ss[S_RECORDED] = 0.0
        if rec or done:
            _write(out, n_out, a, st, mst, mp, cp, w, v, iext, phi, st[TIME] - ss[S_T0])
            n_out += 1
            ss[S_REC_T] = st[TIME]
            ss[S_REC_V] = v
            ss[S_REC_I] = iext
            ss[S_RECORDED] = 1.0
        if done:
            return n_out, -1, R_DONE
        v_prev = v
        i_prev = iext


DL_FRACTION = 0.5  # sub-step cap as a fraction of the double-layer time constant ...
DL_SPAN = 16.0  # ... during this many time constants after a setpoint change ...
DL_WATCH = 100.0  # ... when the run is observed within this many of them


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def _double_layer_time(mst, cp, w, temperature):
    """C_dl times the charge-transfer resistances of the materials in parallel, at their present
    currents (w[11] holds i0*A_s of the last solve)."""
    f = F_CONST / (R_GAS * temperature)
    g = 0.0
    for j in range(mst.shape[0]):
        z = mst[j, IJ] / (2.0 * w[11, j])
        g += f * w[11, j] * math.sqrt(1.0 + z * z)  # 1/R_ct,j (Butler-Volmer, alpha = 1/2)
    return cp[CDL] / g


@njit(cache=True, _nrt=False, error_model="numpy", inline="always")
def e_win_max(e_win):
    x = 0.0
    for i in range(e_win.shape[0]):
        if e_win[i] > x:
            x = e_win[i]
    return x
