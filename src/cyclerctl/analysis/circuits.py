"""Equivalent circuits from strings and complex nonlinear least squares (CNLS).

Grammar (impedance.py conventions): elements in series are joined by "-", a parallel group is
"p(a,b,...)". Elements (name = type + number, e.g. R0, CPE1, W1):
  R  resistor            Z = R
  C  capacitor           Z = 1/(jωC)
  L  inductor            Z = jωL
  CPE constant phase     Z = 1/(Q (jω)^α)
  W  semi-infinite Warburg      Z = σ(1 − j)/√ω                       (σ in Ω s^-½)
  Wo finite, reflective (open)  Z = Z₀ coth√(jωτ)/√(jωτ)              (planar film, τ = L²/D)
  Ws finite, transmissive       Z = Z₀ tanh√(jωτ)/√(jωτ)
  Sph finite spherical diffusion Z = A tanh√s/(√s − tanh√s), s = jωτ  (τ = R_p²/D; low-f R = A/5,
                                 Warburg limit σ = A/√(2τ))
Impedance convention: Z = Z' + jZ'' (Z'' < 0 for capacitive behaviour).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import least_squares

from ..errors import ConfigError
from .circuit_kernel import (
    KIND_CODE,
    PARALLEL,
    SERIES,
    impedance_into,
    levenberg_marquardt,
    randles_profile_into,
    residuals_into,
)

ELEMENTS: dict[str, tuple[str, ...]] = {
    "R": ("",), "C": ("",), "L": ("",), "CPE": ("Q", "alpha"), "W": ("sigma",),
    "Wo": ("Z0", "tau"), "Ws": ("Z0", "tau"), "Sph": ("A", "tau"),
}
_TOKEN = re.compile(r"\s*(p\(|\(|\)|,|-|[A-Za-z]+\d*)")


def _program(tree: tuple) -> np.ndarray:
    """The parsed `tree` as the postfix program of circuit_kernel: rows (op, first parameter or count)."""
    rows: list[tuple[int, int]] = []

    def emit(node: tuple) -> None:
        if node[0] == "element":
            rows.append((KIND_CODE[node[1]], node[2]))
            return
        subs = node[1] if node[0] == "series" else [sub for sub, _, _ in node[1]]
        for sub in subs:
            emit(sub)
        if len(subs) > 1:
            rows.append((SERIES if node[0] == "series" else PARALLEL, len(subs)))

    emit(tree)
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


@dataclass
class Circuit:
    """A parsed circuit: `names` of its parameters in order, `impedance(params, f)` and
    `impedance_jacobian(params, f)` (Z and ∂Z/∂p in closed form, compiled)."""

    text: str
    names: list[str]
    kinds: list[str]  # element kind per parameter
    program: np.ndarray  # postfix rows (op, a) of circuit_kernel

    def model(self, freq: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """params -> (Z, ∂Z/∂p (frequency, parameter)) on the fixed frequencies `freq`."""
        w = 2 * np.pi * np.ascontiguousarray(freq, dtype=np.float64)
        n = len(self.names)

        def zj(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            z = np.empty(w.size, dtype=complex)
            jac = np.empty((n, w.size), dtype=complex)  # parameter-major: each row contiguous
            impedance_into(self.program, w, np.ascontiguousarray(params, dtype=np.float64), z, jac)
            return z, jac.T
        return zj

    def impedance_jacobian(self, params: np.ndarray | list[float], freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model(freq)(np.asarray(params, dtype=np.float64))

    def impedance(self, params: np.ndarray | list[float], freq: np.ndarray) -> np.ndarray:
        return self.impedance_jacobian(params, freq)[0]


@lru_cache(maxsize=128)
def parse_circuit(text: str) -> Circuit:
    """Parse "R0-p(R1-W1,C1)" into a Circuit (cached per string). Bad strings raise ConfigError saying where."""
    tokens, pos = [], 0
    src = text.replace(" ", "")
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m:
            raise ConfigError(f"circuit {text!r}: unexpected text at {src[pos:]!r} (use e.g. 'R0-p(R1-W1,C1)')")
        tokens.append(m.group(1))
        pos = m.end()
    names: list[str] = []
    kinds: list[str] = []
    k = 0

    def element(tok: str):
        m = re.fullmatch(r"([A-Za-z]+?)(\d*)", tok)
        kind = next((e for e in sorted(ELEMENTS, key=len, reverse=True) if tok.startswith(e)
                     and tok[len(e):].isdigit() | (tok[len(e):] == "")), None)
        if kind is None or m is None:
            raise ConfigError(f"circuit {text!r}: unknown element {tok!r} (known: {', '.join(ELEMENTS)})")
        start = len(names)
        for sub in ELEMENTS[kind]:
            pname = f"{tok}_{sub}" if sub else tok
            if pname in names:
                raise ConfigError(f"circuit {text!r}: element {tok!r} appears twice")
            names.append(pname)
            kinds.append(kind)
        return ("element", kind, start)

    def series():
        nonlocal k
        parts = [term()]
        while k < len(tokens) and tokens[k] == "-":
            k += 1
            parts.append(term())
        return parts[0] if len(parts) == 1 else ("series", parts)

    def term():
        nonlocal k
        if k >= len(tokens):
            raise ConfigError(f"circuit {text!r} ends too early")
        tok = tokens[k]
        k += 1
        if tok == "p(":
            branches = []
            while True:
                lo = len(names)
                f = series()
                branches.append((f, lo, len(names)))
                if k < len(tokens) and tokens[k] == ",":
                    k += 1
                    continue
                break
            if k >= len(tokens) or tokens[k] != ")":
                raise ConfigError(f"circuit {text!r}: missing ')'")
            k += 1
            return ("parallel", branches)
        if tok in ("(", ")", ",", "-"):
            raise ConfigError(f"circuit {text!r}: unexpected {tok!r}")
        return element(tok)

    f = series()
    if k != len(tokens):
        raise ConfigError(f"circuit {text!r}: unexpected {tokens[k]!r}")
    return Circuit(text, names, kinds, _program(f))


@dataclass
class _Run:
    """One local least-squares run: the end point, ½ Σ r², ∂r/∂x (one row per variable), converged."""

    x: np.ndarray
    cost: float
    jac: np.ndarray
    success: bool


@dataclass
class FitResult:
    circuit: str
    names: list[str]
    values: np.ndarray
    stderr: np.ndarray
    chi2: float  # Σ of squared modulus-weighted residuals / (2N − p)
    success: bool
    aic: float = math.nan  # Akaike: n·ln(RSS/n) + 2p, n = 2N; compares circuits of different size
    covariance: np.ndarray | None = None  # of the fitted variables (log p; α itself), residual-variance scaled

    def as_dict(self) -> dict:
        return {"circuit": self.circuit, "parameters": dict(zip(self.names, self.values.tolist(), strict=True)),
                "stderr": dict(zip(self.names, self.stderr.tolist(), strict=True)), "chi2": self.chi2,
                "aic": self.aic, "success": self.success}


DIFFUSION = ("W", "Wo", "Ws", "Sph")
_DIFFUSION_NAME = re.compile(r"^(Sph|Wo|Ws|W)(\d*)_(A|Z0|sigma)$")


def warburg_coefficient(fit: FitResult) -> tuple[float, float, str] | None:
    """Warburg coefficient σ (Ω s^-½), its standard error and the element it comes from, from the
    first finite- or semi-infinite-diffusion element of a fit; None if the circuit has none.

    σ is the coefficient of the high-frequency limit Z → σ(1 − j)ω^-½ (ωτ ≫ 1), with
    1/√(jωτ) = (1 − j)/√(2ωτ):
      W    Z = σ(1 − j)/√ω                      σ itself
      Wo   Z = Z₀ coth√s/√s → Z₀/√s (coth → 1)   σ = Z₀/√(2τ)
      Ws   Z = Z₀ tanh√s/√s → Z₀/√s (tanh → 1)   σ = Z₀/√(2τ)
      Sph  Z = A tanh√s/(√s − tanh√s) → A/√s     σ = A/√(2τ)   (s = jωτ)
    The corrections are O(1/s) (Sph: +A/s, purely capacitive) and exponentially small (Wo, Ws).
    Standard error: ln σ = ln A − ½ ln τ − ½ ln 2 is linear in the fitted log parameters, so
    var(ln σ) = var(ln A) + ¼ var(ln τ) − cov(ln A, ln τ), from the fit covariance."""
    for k, name in enumerate(fit.names):
        hit = _DIFFUSION_NAME.match(name)
        if hit is None or not np.isfinite(fit.values[k]):
            continue
        kind, num, _ = hit.groups()
        label = kind + num
        cov = fit.covariance
        if kind == "W":
            var = cov[k, k] if cov is not None else (fit.stderr[k] / fit.values[k]) ** 2
            sigma = float(fit.values[k])
        else:
            t = fit.names.index(f"{label}_tau")
            sigma = float(fit.values[k] / math.sqrt(2.0 * fit.values[t]))
            if cov is not None:
                var = cov[k, k] + 0.25 * cov[t, t] - cov[k, t]
            else:  # no covariance: independent errors (an upper bound when A and τ correlate positively)
                var = (fit.stderr[k] / fit.values[k]) ** 2 + 0.25 * (fit.stderr[t] / fit.values[t]) ** 2
        return sigma, float(sigma * math.sqrt(max(float(var), 0.0))), label
    return None
BRIEF_READ_OFF = 5  # evaluations per parameter for each start read off the spectrum, before the best is converged
BRIEF_GENERIC = 15  # the same for each generic start
WARM = 5  # evaluations per parameter for the run from the previous fit of a series (fit_circuit `previous`)
WARM_RANGE = 1.5  # the warm fit counts only if no parameter moved by more than this factor (α: by ln of it)
CONVERGE = 30  # evaluations per parameter for the run to convergence (a degenerate valley, e.g. an arc
# outside the window trading R0 against R1, is not followed further: its cost no longer changes)


def _first_valley(mim: np.ndarray, apex: int) -> int | None:
    """Index of the first local minimum of −Z'' below the arc apex (frequencies descending): where
    the fastest arc gives way to the next process."""
    for k in range(apex + 1, len(mim) - 1):
        if mim[k] <= mim[k - 1] and mim[k] <= mim[k + 1]:
            return k
    return None


def randles_profile(freq: np.ndarray, z_we: np.ndarray, z_total: np.ndarray) -> tuple[float, float, float] | None:
    """(C_dl, R_ct, σ) of Z = [jωC_dl + 1/(R_ct + σ(1 − j)ω^-½)]^-1 fitted to the working-electrode
    part `z_we` of a spectrum, by profiling over C_dl: for a given C_dl, 1/(1/Z − jωC_dl) =
    R_ct + σ(1 − j)ω^-½ is linear in R_ct and σ (weighted least squares, errors mapped back to Z and
    taken relative to the whole impedance `z_total`). A semi-infinite Warburg stands in for any
    diffusion element here; this is a starting point for the full fit, not a result. All trial C_dl
    at once (compiled): the 2 × 2 normal equations per C_dl, solved in closed form."""
    w = 2 * np.pi * np.asarray(freq, float)
    y = 1.0 / z_we
    c_top = float(np.max(y.imag / w))
    if not c_top > 0:
        return None
    c = np.geomspace(c_top * 1e-4, c_top, 160)
    r_ct, sigma, cost = np.empty(c.size), np.empty(c.size), np.empty(c.size)
    randles_profile_into(w, np.ascontiguousarray(z_we, dtype=complex), np.ascontiguousarray(z_total, dtype=complex),
                         c, r_ct, sigma, cost)
    ok = (r_ct > 0) & (sigma > 0) & np.isfinite(cost)
    if not ok.any():
        return None
    k = int(np.argmin(np.where(ok, cost, np.inf)))
    return float(c[k]), float(r_ct[k]), float(sigma[k])


def _physical_starts(circuit: Circuit, f: np.ndarray, zz: np.ndarray, apex: int) -> list[np.ndarray]:
    """Starts for circuits with an arc in front of a diffusion element (R_ct − W/Sph ∥ C_dl), from the
    spectrum itself: the fastest arc (a counter electrode) fitted above the first valley of −Z'',
    then the working-electrode Randles part by `randles_profile`; for circuits with a front arc also
    the reading where the spectrum's one arc is the working electrode's (front arc negligible,
    R = 10^-3 R_ct); diffusion times from semi-infinite (the window shows only the √ω region) to
    about the lowest frequency."""
    kinds, names = circuit.kinds, circuit.names
    r_idx = [i for i, k in enumerate(kinds) if k == "R"]
    c_idx = [i for i, k in enumerate(kinds) if k == "C"]
    d_idx = [i for i, k in enumerate(kinds) if k in DIFFUSION]
    if not d_idx or not c_idx or len(r_idx) < 2 or any(k in ("CPE", "L") for k in kinds):
        return []
    readings = _readings(np.ascontiguousarray(f, dtype=np.float64).tobytes(),
                         np.ascontiguousarray(zz, dtype=complex).tobytes(), apex, len(c_idx) >= 2)
    w_low = float(2 * np.pi * f.min())
    has_tau = any(names[i].endswith("_tau") for i in d_idx)
    starts = []
    for tau in ((1e3 / w_low, 30.0 / w_low, 1.0 / w_low) if has_tau else (math.nan,)):
        for r_s, front, (c_dl, r_ct, sigma) in readings:
            b = np.empty(len(names))
            b[r_idx[0]] = r_s
            if front:
                b[r_idx[1]], b[c_idx[0]] = front
            for i in r_idx[1 + bool(front):]:
                b[i] = r_ct
            for i in c_idx[bool(front):]:
                b[i] = c_dl
            for i in d_idx:
                if kinds[i] == "W":
                    b[i] = sigma
                elif names[i].endswith("_tau"):
                    b[i] = tau
                    b[i - 1] = sigma * math.sqrt(2 * tau)  # Z0 or A: the √ω limit is σ = A/√(2τ)
            starts.append(b)
    return starts


@lru_cache(maxsize=16)
def _readings(f_bytes: bytes, z_bytes: bytes, apex: int, two_arc: bool) -> tuple:
    """(R_s, front arc (R, C) or None, (C_dl, R_ct, σ)) readings of a spectrum (frequencies
    descending), shared by the circuits fitted to it: with `two_arc`, the counter-electrode arc above
    the first valley then the Randles profile below it, and the one arc as the working electrode's."""
    f = np.frombuffer(f_bytes, dtype=np.float64)
    zz = np.frombuffer(z_bytes, dtype=complex)
    w = 2 * np.pi * f
    r_s0 = max(float(zz.real[0]), 1e-6)
    readings = []
    if two_arc:  # R0-p(R1,C1)-...: the first arc is fitted on its own
        valley = _first_valley(-zz.imag, apex)
        if valley is not None and valley >= 3 and len(f) - valley >= 4:
            hi = f >= f[valley]
            ce = fit_circuit("R0-p(R1,C1)", f[hi], zz[hi])
            if np.all(np.isfinite(ce.values)):
                r_s, r1, c1 = (float(v) for v in ce.values)
                z_front = r_s + 1.0 / (1.0 / r1 + 1j * w * c1)
                lo = f < f[valley]
                prof = randles_profile(f[lo], (zz - z_front)[lo], zz[lo])
                if prof is not None:
                    readings.append((r_s, (r1, c1), prof))
    prof = randles_profile(f, zz - r_s0, zz)
    if prof is not None:
        readings.append((r_s0, (1e-3 * prof[1], prof[0]) if two_arc else None, prof))
    return tuple(readings)


def _starts(circuit: Circuit, freq: np.ndarray, z: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(starts read off the spectrum by `_physical_starts`, generic starts): R_s at high f, the arc
    diameter and apex, the low-frequency tail; several diffusion time constants only where nothing
    was read off the spectrum."""
    order = np.argsort(freq)[::-1]
    f, zz = freq[order], z[order]
    r_s = max(float(zz.real[0]), 1e-6)
    mim = -zz.imag
    apex = int(np.argmax(mim[: max(3, len(mim) // 2)]))  # arc apex in the high-frequency half
    arc = max(2 * (float(zz.real[apex]) - r_s), 1e-3 * r_s + 1e-6)
    f_apex = float(f[apex])
    w_low = 2 * np.pi * float(f[-1])
    sigma = max(float(mim[-1]) * np.sqrt(w_low), 1e-6)
    n_r = sum(1 for kd, nm in zip(circuit.kinds, circuit.names, strict=True) if kd == "R")
    base = []
    r_seen = 0
    n_c = sum(1 for kd in circuit.kinds if kd == "C")
    c_seen = 0
    for kd, nm in zip(circuit.kinds, circuit.names, strict=True):
        if kd == "R":
            base.append(r_s if r_seen == 0 else arc / max(n_r - 1, 1))
            r_seen += 1
        elif kd == "C":  # several arcs: the earlier ones faster (smaller C) than the last
            base.append(1.0 / (2 * np.pi * f_apex * arc) * 10.0 ** (c_seen - n_c + 1))
            c_seen += 1
        elif kd == "L":
            base.append(1e-7)
        elif nm.endswith("_Q"):
            base.append(1.0 / (2 * np.pi * f_apex * arc))
        elif nm.endswith("_alpha"):
            base.append(0.9)
        elif kd == "W":
            base.append(sigma)
        elif nm.endswith("_tau"):
            base.append(1.0 / w_low)
        else:  # Z0 / A amplitudes
            base.append(sigma * np.sqrt(2.0 / w_low))
    starts = [np.array(base)]
    if n_c >= 2:  # the slower arc (e.g. a working electrode behind the counter-electrode arc) may be hidden
        for scale in (1e2, 1e4):
            b = np.array(base)
            last_c = max(i for i, kd in enumerate(circuit.kinds) if kd == "C")
            b[last_c] *= scale
            starts.append(b)
    if any(nm.endswith("_tau") for nm in circuit.names):
        for b0 in list(starts):
            for scale in (1e-2, 1e2, 1e4):
                b = b0.copy()
                for i, nm in enumerate(circuit.names):
                    if nm.endswith("_tau"):
                        b[i] *= scale
                        b[i - 1] *= np.sqrt(scale)
                starts.append(b)
    phys = _physical_starts(circuit, f, zz, apex)
    if phys:  # these already span τ from semi-infinite to 1/ω_min: the unscaled generic starts suffice
        starts = starts[:3 if n_c >= 2 else 1]
    return phys, starts


def initial_guess(circuit: Circuit, freq: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
    """Starting points from the spectrum's shape: first those of `_physical_starts` (counter-electrode
    arc above the first valley of −Z'', Randles part profiled over C_dl), then generic ones."""
    physical, generic = _starts(circuit, freq, z)
    return physical + generic


def fit_circuit(circuit: Circuit | str, freq: np.ndarray, z: np.ndarray,
                guess: list[float] | None = None, good_chi2: float | None = None,
                previous: np.ndarray | None = None) -> FitResult:
    """CNLS with modulus weighting: minimise Σ |Z_model − Z|²/|Z|² over log-parameters (CPE α in
    (0, 1]), with the Jacobian of the circuit in closed form. Standard errors from the Jacobian at
    the optimum, scaled by the residual variance.

    Each local fit is the compiled Levenberg-Marquardt of circuit_kernel (scipy's trust-region
    reflective method where a CPE's α is bounded), a run to convergence at most `CONVERGE`
    evaluations per parameter.

    Starts (`guess`, else those of `_starts`): the few read off the spectrum each run briefly
    (`BRIEF_READ_OFF` evaluations per parameter) and the best of them to convergence. If that fit
    has χ² ≤ `good_chi2` (analyze_spectrum: the Lin-KK residual variance of the same spectrum; the
    circuit then explains it as well as the causal linear model does) it is the result. Otherwise
    (and always when `good_chi2` is None) every generic start runs briefly (`BRIEF_GENERIC`), the
    best of them to convergence, and the lower χ² of the two fits wins.

    Warm start: `previous` (parameters, e.g. this circuit's fit to the spectrum before in a series)
    is run first, at most `WARM` evaluations per parameter. If that converges with χ² ≤ `good_chi2`
    and no parameter moved by more than a factor `WARM_RANGE`, it is the result and nothing is read
    off the spectrum. Otherwise (and with `good_chi2` None, or `previous` not a finite positive
    point of the circuit) the starts above run as if it had not been given. The factor keeps the
    fit in the previous minimum's basin: where a circuit has more elements than the spectrum shows
    (a two-arc circuit on a one-arc spectrum) its minima are many and within a few % in χ², and a
    warm run that wanders off (e.g. τ → ∞) may end in a worse one than the starts would find."""
    c = parse_circuit(circuit) if isinstance(circuit, str) else circuit
    freq = np.asarray(freq, dtype=np.float64)
    z = np.asarray(z, dtype=complex)
    n_par = len(c.names)
    is_alpha = np.array([n.endswith("_alpha") for n in c.names])
    any_alpha = bool(is_alpha.any())
    w = 2 * np.pi * np.ascontiguousarray(freq)
    z_data = np.ascontiguousarray(z)
    inv_w = 1.0 / np.abs(z_data)
    dz = np.empty((n_par, freq.size), dtype=complex)  # ∂Z/∂p, parameter-major (work space)
    cache: list = [None, None, None]  # x, residual and Jacobian (one row per variable) of the latest evaluation

    def to_params(x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # a trial step far out: inf, caught as a non-finite residual
            return np.where(is_alpha, x, np.exp(x)) if any_alpha else np.exp(x)

    def evaluate(x: np.ndarray) -> None:
        """Residuals (Re, Im interleaved) and their Jacobian in ln p (α itself), compiled."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        r, jac = np.empty(2 * freq.size), np.empty((n_par, 2 * freq.size))
        residuals_into(c.program, w, x, is_alpha, z_data, inv_w, dz, r, jac)
        cache[0], cache[1], cache[2] = x.copy(), r, jac

    def resid(x: np.ndarray) -> np.ndarray:
        if cache[0] is None or not (cache[0] == x).all():
            evaluate(x)
        return cache[1]

    def jac_rows(x: np.ndarray) -> np.ndarray:
        if cache[0] is None or not (cache[0] == x).all():
            evaluate(x)
        return cache[2]

    lo = np.where(is_alpha, 0.3, -np.inf)
    hi = np.where(is_alpha, 1.0, np.inf)

    def run(x0: np.ndarray, tol: float, nfev: int) -> _Run | None:
        """One local fit from `x0`: compiled Levenberg-Marquardt (circuit_kernel) where nothing is
        bounded, else scipy's trust-region reflective method."""
        if not any_alpha:
            r, jac = np.empty(2 * freq.size), np.empty((n_par, 2 * freq.size))
            x, cost, status, _ = levenberg_marquardt(c.program, w, z_data, inv_w, is_alpha,
                                                     np.ascontiguousarray(x0, dtype=np.float64), nfev * n_par,
                                                     tol, r, jac)
            return _Run(x, float(cost), jac, status in (1, 2, 4, 6))
        try:
            res = least_squares(resid, x0, jac=lambda x: jac_rows(x).T, bounds=(lo, hi), method="trf",
                                x_scale="jac", xtol=tol, ftol=tol, gtol=tol, max_nfev=nfev * n_par)
        except (ValueError, FloatingPointError):
            return None
        return _Run(res.x, float(res.cost), jac_rows(res.x).copy(), bool(res.success))

    def log_x(p0: np.ndarray) -> np.ndarray:
        return np.where(is_alpha, np.clip(p0, 0.31, 0.99), np.log(np.maximum(p0, 1e-300)))

    dof = max(2 * freq.size - n_par, 1)
    good_cost = -math.inf if good_chi2 is None else 0.5 * good_chi2 * dof
    best = None
    if previous is not None and good_chi2 is not None:
        p_prev = np.asarray(previous, dtype=np.float64)
        if p_prev.shape == (n_par,) and np.all(np.isfinite(p_prev)) and np.all(p_prev > 0):
            x_prev = log_x(p_prev)
            warm = run(x_prev, 1e-12, WARM)
            if (warm is not None and warm.success and warm.cost <= good_cost
                    and np.all(np.abs(warm.x - x_prev) <= math.log(WARM_RANGE))):
                best = warm
    if best is None:
        best = _cold_fit(c, freq, z, guess, run, log_x, good_cost)
    if best is None:
        return FitResult(c.text, list(c.names), np.full(n_par, np.nan), np.full(n_par, np.nan), np.nan, False)
    values = to_params(best.x)
    s2 = 2 * best.cost / dof
    try:
        cov = np.linalg.pinv(best.jac @ best.jac.T) * s2
        se_x = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        cov, se_x = None, np.full(len(values), np.nan)
    with np.errstate(all="ignore"):
        stderr = np.where(is_alpha, se_x, values * se_x)
    n = 2 * freq.size
    aic = n * math.log(max(2 * best.cost, 1e-300) / n) + 2 * len(values)
    return FitResult(c.text, list(c.names), values, stderr, float(s2), bool(best.success), float(aic), cov)


def _cold_fit(c: Circuit, freq: np.ndarray, z: np.ndarray, guess: list[float] | None,
              run: Callable[[np.ndarray, float, int], _Run | None], log_x: Callable[[np.ndarray], np.ndarray],
              good_cost: float) -> _Run | None:
    """The multi-start search of `fit_circuit`: the starts read off the spectrum briefly, the best to
    convergence; the generic starts too if its cost is above `good_cost`; the lower cost wins."""
    physical, generic = ([np.asarray(guess, float)], []) if guess is not None else _starts(c, freq, z)
    if not physical:  # nothing read off the spectrum: the first generic start stands in
        physical, generic = generic[:1], generic[1:]

    def brief_best(group: list[np.ndarray], nfev: int) -> _Run | None:
        """Every start of `group` for `nfev` × (number of parameters) evaluations; the lowest cost."""
        out = None
        for p0 in group:
            res = run(log_x(p0), 1e-8, nfev)
            if res is not None and (out is None or res.cost < out.cost):
                out = res
        return out

    if len(physical) == 1:  # a single start: straight to convergence
        best = run(log_x(physical[0]), 1e-12, CONVERGE)
    else:
        best = brief_best(physical, BRIEF_READ_OFF)
        if best is not None:
            best = run(best.x, 1e-12, CONVERGE) or best
    if best is None or best.cost > good_cost:
        brief = brief_best(generic, BRIEF_GENERIC)
        if brief is not None:
            brief = run(brief.x, 1e-12, CONVERGE) or brief
            if best is None or brief.cost < best.cost:
                best = brief
    return best
