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
def _div(num: complex, den: complex) -> complex:
    """num/den, NaN for den = 0 (a trial step far out: caught as a non-finite residual)."""
    if den == 0:
        return complex(math.nan, math.nan)
    return num / den


@njit(cache=True, error_model="numpy")
def _diffusion_shape(kind: int, s: complex) -> tuple[complex, complex]:
    """g(s) and dg/ds of the finite-diffusion elements, Z = A·g(√(jωτ)):
    Wo coth s/s, Ws tanh s/s, Sph tanh s/(s − tanh s) (for |s| < 10^-2 its series 3/s² + 1/5)."""
    if kind == SPH and abs(s) < 1e-2:
        return _div(3.0, s * s) + 0.2, _div(-6.0, s * s * s)
    th = cmath.tanh(s)
    sech2 = 1.0 - th * th
    if kind == WO:
        g = _div(1.0, s * th)
        return g, -(th + s * sech2) * g * g
    if kind == WS:
        return _div(th, s), _div(s * sech2 - th, s * s)
    den = s - th
    return _div(th, den), _div(s * sech2 - th, den * den)


@njit(cache=True, error_model="numpy")
def impedance_into(program: np.ndarray, w: np.ndarray, p: np.ndarray, z: np.ndarray, dz: np.ndarray) -> None:
    """Z (into `z`, one per angular frequency `w`) and ∂Z/∂p (into `dz`, parameter × frequency)."""
    n_ops = program.shape[0]
    zs = np.empty(n_ops, dtype=np.complex128)
    los = np.empty(n_ops, dtype=np.int64)
    his = np.empty(n_ops, dtype=np.int64)
    for k in range(w.size):
        jw = 1j * w[k]
        sp = 0
        for o in range(n_ops):
            op = program[o, 0]
            a = program[o, 1]
            if op == SERIES or op == PARALLEL:
                base = sp - a
                if op == SERIES:
                    zt = 0j
                    for i in range(base, sp):
                        zt += zs[i]
                else:
                    y = 0j
                    for i in range(base, sp):
                        y += _div(1.0, zs[i])
                    zt = _div(1.0, y)
                    for i in range(base, sp):
                        f = _div(zt, zs[i])
                        f = f * f
                        for q in range(los[i], his[i]):
                            dz[q, k] *= f
                lo, hi = los[base], his[sp - 1]
                sp = base
            else:
                lo, hi = a, a + N_PARAMS[op]
                v = p[a]
                if op == R:
                    zt = v + 0j
                    dz[a, k] = 1.0
                elif op == C:
                    zt = _div(1.0, jw * v)
                    dz[a, k] = _div(-zt, v)
                elif op == L:
                    zt = jw * v
                    dz[a, k] = jw
                elif op == CPE:
                    lj = cmath.log(jw)
                    zt = _div(1.0, v * cmath.exp(p[a + 1] * lj))
                    dz[a, k] = _div(-zt, v)
                    dz[a + 1, k] = -zt * lj
                elif op == W:
                    wb = (1.0 - 1j) / math.sqrt(w[k])
                    zt = v * wb
                    dz[a, k] = wb
                else:
                    tau = p[a + 1]
                    s = cmath.sqrt(jw * tau)
                    g, dg = _diffusion_shape(op, s)
                    zt = v * g
                    dz[a, k] = g
                    dz[a + 1, k] = _div(v * dg * s, 2.0 * tau)  # ds/dτ = s/(2τ)
            zs[sp] = zt
            los[sp] = lo
            his[sp] = hi
            sp += 1
        z[k] = zs[0]


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
    z = np.empty(w.size, dtype=np.complex128)
    impedance_into(program, w, p, z, dz)
    for k in range(w.size):
        d = (z[k] - z_data[k]) * inv_w[k]
        re_ok, im_ok = math.isfinite(d.real), math.isfinite(d.imag)
        r[2 * k] = d.real if re_ok else 1e6
        r[2 * k + 1] = d.imag if im_ok else 1e6
        for i in range(n):
            v = dz[i, k] * (dp[i] * inv_w[k])
            jac[i, 2 * k] = v.real if re_ok and math.isfinite(v.real) else 0.0
            jac[i, 2 * k + 1] = v.imag if im_ok and math.isfinite(v.imag) else 0.0
