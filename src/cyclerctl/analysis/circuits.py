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

import numpy as np
from scipy.optimize import least_squares

from ..errors import ConfigError

ELEMENTS: dict[str, tuple[str, ...]] = {
    "R": ("",), "C": ("",), "L": ("",), "CPE": ("Q", "alpha"), "W": ("sigma",),
    "Wo": ("Z0", "tau"), "Ws": ("Z0", "tau"), "Sph": ("A", "tau"),
}
_TOKEN = re.compile(r"\s*(p\(|\(|\)|,|-|[A-Za-z]+\d*)")


def _element_z(kind: str, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    jw = 1j * w
    if kind == "R":
        return np.full(w.shape, p[0], dtype=complex)
    if kind == "C":
        return 1.0 / (jw * p[0])
    if kind == "L":
        return jw * p[0]
    if kind == "CPE":
        return 1.0 / (p[0] * jw ** p[1])
    if kind == "W":
        return p[0] * (1 - 1j) / np.sqrt(w)
    s = np.sqrt(jw * p[1])
    if kind == "Wo":
        return p[0] / (s * np.tanh(s))
    if kind == "Ws":
        return p[0] * np.tanh(s) / s
    if kind == "Sph":
        small = np.abs(s) < 1e-2  # tanh s ≈ s − s³/3: use the series 3/s² + 1/5 (no cancellation)
        ss = np.where(small, 1.0, s)
        th = np.tanh(ss)
        return p[0] * np.where(small, 3.0 / np.where(small, s, 1.0) ** 2 + 0.2, th / (ss - th))
    raise AssertionError(kind)


@dataclass
class Circuit:
    """A parsed circuit: `names` of its parameters in order, `impedance(params, f)`."""

    text: str
    names: list[str]
    kinds: list[str]  # element kind per parameter
    _eval: Callable[[np.ndarray, np.ndarray], np.ndarray]

    def impedance(self, params: np.ndarray | list[float], freq: np.ndarray) -> np.ndarray:
        return self._eval(np.asarray(params, dtype=np.float64), 2 * np.pi * np.asarray(freq, dtype=np.float64))


def parse_circuit(text: str) -> Circuit:
    """Parse "R0-p(R1-W1,C1)" into a Circuit. Bad strings raise ConfigError saying where."""
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
        n = len(ELEMENTS[kind])
        return lambda p, w: _element_z(kind, p[start:start + n], w)

    def series():
        nonlocal k
        parts = [term()]
        while k < len(tokens) and tokens[k] == "-":
            k += 1
            parts.append(term())
        return parts[0] if len(parts) == 1 else (lambda p, w: sum(f(p, w) for f in parts))

    def term():
        nonlocal k
        if k >= len(tokens):
            raise ConfigError(f"circuit {text!r} ends too early")
        tok = tokens[k]
        k += 1
        if tok == "p(":
            branches = [series()]
            while k < len(tokens) and tokens[k] == ",":
                k += 1
                branches.append(series())
            if k >= len(tokens) or tokens[k] != ")":
                raise ConfigError(f"circuit {text!r}: missing ')'")
            k += 1
            return lambda p, w: 1.0 / sum(1.0 / f(p, w) for f in branches)
        if tok in ("(", ")", ",", "-"):
            raise ConfigError(f"circuit {text!r}: unexpected {tok!r}")
        return element(tok)

    f = series()
    if k != len(tokens):
        raise ConfigError(f"circuit {text!r}: unexpected {tokens[k]!r}")
    return Circuit(text, names, kinds, f)


@dataclass
class FitResult:
    circuit: str
    names: list[str]
    values: np.ndarray
    stderr: np.ndarray
    chi2: float  # Σ of squared modulus-weighted residuals / (2N − p)
    success: bool
    aic: float = math.nan  # Akaike: n·ln(RSS/n) + 2p, n = 2N; compares circuits of different size

    def as_dict(self) -> dict:
        return {"circuit": self.circuit, "parameters": dict(zip(self.names, self.values.tolist(), strict=True)),
                "stderr": dict(zip(self.names, self.stderr.tolist(), strict=True)), "chi2": self.chi2,
                "aic": self.aic, "success": self.success}


DIFFUSION = ("W", "Wo", "Ws", "Sph")


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
    diffusion element here; this is a starting point for the full fit, not a result."""
    w = 2 * np.pi * np.asarray(freq, float)
    y = 1.0 / z_we
    c_top = float(np.max(y.imag / w))
    if not c_top > 0:
        return None
    a = np.column_stack([np.r_[np.ones_like(w), np.zeros_like(w)], np.r_[w ** -0.5, -(w ** -0.5)]])
    best = None
    with np.errstate(all="ignore"):
        for c in np.geomspace(c_top * 1e-4, c_top, 160):
            zf = 1.0 / (y - 1j * w * c)
            wt = np.abs(z_we / zf) ** 2 / np.abs(z_total)  # dZ = (Z/zf)² d zf
            wt = np.r_[wt, wt]
            x, *_ = np.linalg.lstsq(a * wt[:, None], np.r_[zf.real, zf.imag] * wt, rcond=None)
            if not (x[0] > 0 and x[1] > 0):
                continue
            zm = 1.0 / (1j * w * c + 1.0 / (x[0] + x[1] * (1 - 1j) / np.sqrt(w)))
            cost = float(np.sum(np.abs((zm - z_we) / z_total) ** 2))
            if np.isfinite(cost) and (best is None or cost < best[0]):
                best = (cost, float(c), float(x[0]), float(x[1]))
    return None if best is None else best[1:]


def _physical_starts(circuit: Circuit, f: np.ndarray, zz: np.ndarray, apex: int) -> list[np.ndarray]:
    """Starts for circuits with an arc in front of a diffusion element (R_ct − W/Sph ∥ C_dl), from the
    spectrum itself: the fastest arc (a counter electrode) fitted above the first valley of −Z'',
    then the working-electrode Randles part by `randles_profile`; diffusion times from
    semi-infinite (the window shows only the √ω region) to about the lowest frequency."""
    kinds, names = circuit.kinds, circuit.names
    r_idx = [i for i, k in enumerate(kinds) if k == "R"]
    c_idx = [i for i, k in enumerate(kinds) if k == "C"]
    d_idx = [i for i, k in enumerate(kinds) if k in DIFFUSION]
    if not d_idx or not c_idx or len(r_idx) < 2 or any(k in ("CPE", "L") for k in kinds):
        return []
    w = 2 * np.pi * f
    r_s = max(float(zz.real[0]), 1e-6)
    z_front = np.full(f.shape, r_s, dtype=complex)
    front: list[float] = []
    lo = np.ones(f.shape, bool)
    if len(c_idx) >= 2:  # R0-p(R1,C1)-...: the first arc is fitted on its own
        valley = _first_valley(-zz.imag, apex)
        if valley is None or valley < 3 or len(f) - valley < 4:
            return []
        hi = f >= f[valley]
        ce = fit_circuit("R0-p(R1,C1)", f[hi], zz[hi])
        if not np.all(np.isfinite(ce.values)):
            return []
        r_s, r1, c1 = (float(v) for v in ce.values)
        z_front = r_s + 1.0 / (1.0 / r1 + 1j * w * c1)
        front = [r1, c1]
        lo = f < f[valley]
    prof = randles_profile(f[lo], (zz - z_front)[lo], zz[lo])
    if prof is None:
        return []
    c_dl, r_ct, sigma = prof
    w_low = float(w.min())
    starts = []
    for tau in (1e3 / w_low, 30.0 / w_low, 1.0 / w_low):
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
        if not any(names[i].endswith("_tau") for i in d_idx):
            break
    return starts


def initial_guess(circuit: Circuit, freq: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
    """Starting points from the spectrum's shape. First those of `_physical_starts` (counter-electrode
    arc above the first valley of −Z'', Randles part profiled over C_dl); then generic ones: R_s at
    high f, the arc diameter and apex, the low-frequency tail, several diffusion time constants."""
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
    starts = _physical_starts(circuit, f, zz, apex) + [np.array(base)]
    if n_c >= 2:  # the slower arc (e.g. a working electrode behind the counter-electrode arc) may be hidden
        for scale in (1e2, 1e4):
            b = np.array(base)
            last_c = max(i for i, kd in enumerate(circuit.kinds) if kd == "C")
            b[last_c] *= scale
            starts.append(b)
    if any(nm.endswith("_tau") for nm in circuit.names):
        for b0 in list(starts[-(3 if n_c >= 2 else 1):]):
            for scale in (1e-2, 1e2, 1e4):
                b = b0.copy()
                for i, nm in enumerate(circuit.names):
                    if nm.endswith("_tau"):
                        b[i] *= scale
                        b[i - 1] *= np.sqrt(scale)
                starts.append(b)
    return starts


def fit_circuit(circuit: Circuit | str, freq: np.ndarray, z: np.ndarray,
                guess: list[float] | None = None) -> FitResult:
    """CNLS with modulus weighting: minimise Σ |Z_model − Z|²/|Z|² over log-parameters (CPE α in
    (0, 1]). Standard errors from the Jacobian at the optimum, scaled by the residual variance."""
    c = parse_circuit(circuit) if isinstance(circuit, str) else circuit
    freq = np.asarray(freq, dtype=np.float64)
    z = np.asarray(z, dtype=complex)
    wmod = np.abs(z)
    is_alpha = np.array([n.endswith("_alpha") for n in c.names])

    def to_params(x: np.ndarray) -> np.ndarray:
        return np.where(is_alpha, x, np.exp(x))

    def resid(x: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            d = (c.impedance(to_params(x), freq) - z) / wmod
        r = np.r_[d.real, d.imag]
        return np.where(np.isfinite(r), r, 1e6)

    lo = np.where(is_alpha, 0.3, -np.inf)
    hi = np.where(is_alpha, 1.0, np.inf)
    best = None
    starts = [np.asarray(guess, float)] if guess is not None else initial_guess(c, freq, z)
    # every start briefly, then the best one to convergence
    for p0 in starts:
        x0 = np.where(is_alpha, np.clip(p0, 0.31, 0.99), np.log(np.maximum(p0, 1e-300)))
        try:
            res = least_squares(resid, x0, bounds=(lo, hi), method="trf", x_scale="jac",
                                xtol=1e-8, ftol=1e-8, gtol=1e-8, max_nfev=15 * len(c.names))
        except (ValueError, FloatingPointError):
            continue
        if best is None or res.cost < best.cost:
            best = res
    if best is not None:
        best = least_squares(resid, best.x, bounds=(lo, hi), method="trf", x_scale="jac",
                             xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=100 * len(c.names))
    if best is None:
        n = len(c.names)
        return FitResult(c.text, c.names, np.full(n, np.nan), np.full(n, np.nan), np.nan, False)
    values = to_params(best.x)
    dof = max(2 * freq.size - len(values), 1)
    s2 = 2 * best.cost / dof
    try:
        cov = np.linalg.pinv(best.jac.T @ best.jac) * s2
        se_x = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        se_x = np.full(len(values), np.nan)
    stderr = np.where(is_alpha, se_x, values * se_x)
    n = 2 * freq.size
    aic = n * math.log(max(2 * best.cost, 1e-300) / n) + 2 * len(values)
    return FitResult(c.text, c.names, values, stderr, float(s2), bool(best.success), float(aic))
