"""Open-circuit potential from sites (MSMR, Baker & Verbrugge 2018).

x(U) = sum_i X_i / (1 + exp(f (U - U0_i) / omega_i)) / sum_i X_i, with f = F/(RT).
Broad sites (omega >> 1) make a sloping region, narrow sites (omega < 1) a plateau. x(U) is explicit;
U(x) is tabulated on a uniform stoichiometry grid by inverting the monotone x(U), together with the
analytic slope dU/dx = 1/(dx/dU). The tables are what the time stepper and the impedance use, so both
see exactly the same OCV.
"""

from __future__ import annotations

import numpy as np

FARADAY = 96485.33212  # C/mol
GAS_CONSTANT = 8.314462618  # J/(mol K)

GRID = 4001  # points of the uniform x grid on [0, 1]
_U_LO, _U_HI, _U_N = -1.0, 4.0, 200_001


def stoichiometry(u: np.ndarray, sites, temperature: float = 298.15) -> np.ndarray:
    """x(U) of an MSMR site set (normalised so x runs 0..1)."""
    f = FARADAY / (GAS_CONSTANT * temperature)
    u = np.asarray(u, dtype=float)[..., None]
    u0, xx, w = (np.array(c, dtype=float) for c in zip(*sites, strict=True))
    z = np.clip(f * (u - u0) / w, -700, 700)
    return (xx / (1.0 + np.exp(z))).sum(-1) / xx.sum()


def dxdu(u: np.ndarray, sites, temperature: float = 298.15) -> np.ndarray:
    """dx/dU (< 0) of an MSMR site set; |dx/dU| * Q_th is the equilibrium dQ/dV."""
    f = FARADAY / (GAS_CONSTANT * temperature)
    u = np.asarray(u, dtype=float)[..., None]
    u0, xx, w = (np.array(c, dtype=float) for c in zip(*sites, strict=True))
    z = np.clip(f * (u - u0) / w, -700, 700)
    e = np.exp(-np.abs(z))  # symmetric form of e/(1+e)^2, no overflow
    return -(xx * f / w * e / (1.0 + e) ** 2).sum(-1) / xx.sum()


_TABLES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def table(sites, temperature: float = 298.15) -> tuple[np.ndarray, np.ndarray]:
    """U and dU/dx on the uniform grid x = linspace(0, 1, GRID) (computed once per site set and
    temperature in a process: a rack of channels on the same preset shares it; copies returned)."""
    key = (tuple(tuple(float(c) for c in site) for site in sites), float(temperature))
    hit = _TABLES.get(key)
    if hit is None:
        hit = _TABLES[key] = _table(sites, temperature)
    return hit[0].copy(), hit[1].copy()


def _table(sites, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    u = np.linspace(_U_HI, _U_LO, _U_N)  # x increases along u decreasing
    x = stoichiometry(u, sites, temperature)
    slope = 1.0 / np.minimum(dxdu(u, sites, temperature), -1e-300)
    xg = np.linspace(0.0, 1.0, GRID)
    # keep x strictly increasing for interpolation (flat tails of x(U) at the ends of the U range)
    keep = np.concatenate([[True], np.diff(x) > 1e-15])
    x, u, slope = x[keep], u[keep], slope[keep]
    ug = np.interp(xg, x, u)
    sg = np.interp(xg, x, slope)
    # outside the reachable range extend linearly with the end slope (steep): a cutoff fires there
    lo, hi = xg < x[0], xg > x[-1]
    ug[lo] = u[0] + slope[0] * (xg[lo] - x[0])
    ug[hi] = u[-1] + slope[-1] * (xg[hi] - x[-1])
    sg[lo], sg[hi] = slope[0], slope[-1]
    return ug, np.maximum(np.minimum(sg, -1e-6), -1e4)


def potential(x: np.ndarray, sites, temperature: float = 298.15) -> np.ndarray:
    """U(x) by interpolation of the table (same as the stepper sees)."""
    ug, _ = table(sites, temperature)
    return np.interp(np.asarray(x, dtype=float), np.linspace(0.0, 1.0, GRID), ug)
