"""Na diffusion in a spherical particle: graded finite-volume shells and their modes.

Fick's law in concentration, dc/dt = (1/r^2) d/dr (r^2 D dc/dr), with a flux boundary at the surface and
symmetry at the centre. Shells are geometrically graded towards the surface (ratio ~1.2, smallest
~1e-4 R) so the first seconds of a pulse (the sqrt(t) response that GITT/ICI use) are resolved.
With D uniform in the particle the semi-discrete system M c' = D K c + b j has fixed modes
(K v = mu M v, M-orthonormal); the update over a step with constant flux is exact:
a_k <- exp(lambda_k h) a_k + (exp(lambda_k h) - 1)/lambda_k * beta_k j,  lambda_k = D mu_k / R^2.
Mode 0 (mu = 0) is the mean stoichiometry, i.e. the charge inventory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh


@dataclass(frozen=True)
class Modes:
    """Modes of a unit sphere (R = 1, D = 1). mu: eigenvalues (<= 0, mu[0] = 0). surface: v_k at the
    outer shell. gap: distance from the outer cell centre to the surface (for the surface value)."""

    mu: np.ndarray
    surface: np.ndarray
    gap: float
    volumes: np.ndarray
    vectors: np.ndarray
    centres: np.ndarray


def shell_edges(n: int = 48, ratio: float = 1.2, spread: float = 300.0) -> np.ndarray:
    """Edges 0 = r_0 < ... < r_n = 1: widths grow by `ratio` from the surface inwards, capped at
    `spread` times the outermost width (so the core is resolved too). 48 shells: outermost ~1.5e-4 R,
    innermost ~0.05 R."""
    w = np.minimum(ratio ** np.arange(n, dtype=float), spread)[::-1]
    return np.concatenate([[0.0], np.cumsum(w) / w.sum()])


def modes(n: int = 48, ratio: float = 1.2) -> Modes:
    """Generalised eigen-decomposition of the shell conductance matrix (unit sphere, unit D)."""
    e = shell_edges(n, ratio)
    vol = e[1:] ** 3 - e[:-1] ** 3  # fraction of the particle volume (sums to 1)
    rc = 0.5 * (e[1:] + e[:-1])
    g = 3.0 * e[1:-1] ** 2 / (rc[1:] - rc[:-1])  # face conductance / (4/3 pi R^3)
    k = np.zeros((n, n))
    i = np.arange(n - 1)
    k[i, i] -= g
    k[i + 1, i + 1] -= g
    k[i, i + 1] += g
    k[i + 1, i] += g
    mu, v = eigh(k, np.diag(vol))
    order = np.argsort(-mu)
    mu, v = mu[order], v[:, order]
    mu[0] = 0.0
    v[:, 0] = 1.0  # inventory mode, M-normalised since sum(vol) = 1
    return Modes(mu=mu, surface=v[-1].copy(), gap=1.0 - rc[-1], volumes=vol, vectors=v, centres=rc)


def crank_surface(t: np.ndarray, tau: float, n_roots: int = 2000) -> np.ndarray:
    """Exact surface stoichiometry rise of a sphere under constant flux (Crank), in units of
    I tau_d / (3 Q_th): 3t/tau + 1/5 - 2 sum exp(-l_n^2 t/tau)/l_n^2, tan l_n = l_n."""
    from scipy.optimize import brentq

    # one root of tan z = z in each interval ((k + 1/2) pi, (k + 3/2) pi)
    roots = np.array([brentq(lambda z: np.tan(z) - z, (k + 0.5) * np.pi + 1e-9, (k + 1.5) * np.pi - 1e-9)
                      for k in range(n_roots)])
    s = np.asarray(t, dtype=float)[..., None] / tau
    series = (np.exp(-roots**2 * s) / roots**2).sum(-1)
    tail = 1.0 / 10.0 - (1.0 / roots**2).sum()  # sum of the omitted 1/l_n^2 (those terms are ~1/l^2 at t = 0)
    return 3 * s[..., 0] + 0.2 - 2 * series - 2 * tail * np.exp(-(roots[-1] ** 2) * s[..., 0])


def sphere_diffusion_impedance(omega: np.ndarray, tau: float, dudx: float, q_th: float) -> np.ndarray:
    """Analytic diffusion impedance of a sphere with reflective centre (Jacobsen & West):
    Z_d = (-dU/dx) tau / (3 Q_th) * tanh(sqrt s) / (sqrt s - tanh(sqrt s)), s = j omega tau."""
    rs = np.sqrt(1j * np.asarray(omega, dtype=float) * tau)
    th = np.tanh(rs)
    return (-dudx) * tau / (3.0 * q_th) * th / (rs - th)
