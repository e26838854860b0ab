"""EIS: Lin-KK validity check, Warburg coefficient, equivalent-circuit fits, D from σ.

- Lin-KK (Schönleber et al., Electrochim. Acta 131 (2014) 20): Ẑ = R₀ + jωL + 1/(jωC) +
  Σ_k R_k/(1 + jωτ_k), τ_k log-spaced over 1/ω_max..1/ω_min, fitted by linear least squares weighted
  by 1/|Z|, with 6 elements per decade (μ = 1 − Σ_{R_k<0}|R_k| / Σ_{R_k≥0}|R_k| reported). Residuals Δ = (Z − Ẑ)/|Z|;
  a spectrum with max |Δ| above `kk_limit` (1 %) is flagged "kk_invalid" (drift, nonlinearity, noise).
- Warburg σ: from the diffusion element of the best circuit, the coefficient of its high-frequency
  limit σ(1 − j)ω^-½ (Sph A/√(2τ), Wo/Ws Z₀/√(2τ), W σ; circuits.warburg_coefficient), with its
  standard error from the fit covariance. The graphical σ (slope of Z' against ω^-½ over the 45°
  region below the arc: consecutive points whose Nyquist slope is 45° ± `window_deg`, at
  f < f_apex/5) is its own column; flagged "warburg_graphical_disagrees" beyond
  `warburg_disagreement` (10 %), and used (flag "warburg_graphical_only") when the best circuit has no
  diffusion element.
- D from σ (Ho, Raistrick, Huggins, with capacity): D = ((−dU/dQ)·R_p / (3√2·σ))², dU/dQ the OCV
  slope per coulomb of the active capacity (= (dU/dx)/Q). Use the same dU/dQ as GITT, or the two
  disagree by construction.
- Circuit fits (circuits.py): the coin half cell R0-p(R1,C1)-p(R2-Sph1,C2) (Na counter-electrode arc,
  then the working electrode with spherical diffusion), Randles with spherical diffusion
  R0-p(R1-Sph1,C1) (D = R_p²/τ),
  Randles with a Warburg R0-p(R1-W1,C1), and the papers' R_s + R_SEI + R_ct + Warburg
  R0-p(R1,C1)-p(R2-W1,C2). The headline R_s, R_ct, C_dl come from the circuit with the lowest
  Akaike criterion (n·ln(RSS/n) + 2p); circuits within 10 of the lowest count as equally good and
  the one with the fewest parameters wins (an extra arc must earn its parameters). A circuit tries
  its generic starts only when the fit from the starts read off the spectrum has χ² above the Lin-KK
  residual variance Σ Δ²/(2N − M − 3) (`good_fit_kk_ratio` = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from .base import KELVIN_OFFSET, Event, MetricRow, column
from .circuits import fit_circuit, warburg_coefficient
from .waveform import WaveformImpedance

M2_TO_CM2 = 1e4
# flags that describe how σ was obtained; they do not make a row invalid
INFORMATIVE = frozenset({"no_warburg_region", "warburg_graphical_only", "warburg_graphical_disagrees",
                         "waveform_uncertain"})

# (circuit, roles of its parameters)
DEFAULT_CIRCUITS: tuple[tuple[str, dict[str, str]], ...] = (
    # coin half cell: Na-metal counter electrode arc, then the working electrode with spherical diffusion
    ("R0-p(R1,C1)-p(R2-Sph1,C2)", {"series_resistance_ohm": "R0", "counter_electrode_resistance_ohm": "R1",
                                   "charge_transfer_resistance_ohm": "R2", "double_layer_capacitance_farad": "C2",
                                   "diffusion_time_second": "Sph1_tau"}),
    ("R0-p(R1-Sph1,C1)", {"series_resistance_ohm": "R0", "charge_transfer_resistance_ohm": "R1",
                          "double_layer_capacitance_farad": "C1", "diffusion_time_second": "Sph1_tau"}),
    ("R0-p(R1-W1,C1)", {"series_resistance_ohm": "R0", "charge_transfer_resistance_ohm": "R1",
                        "double_layer_capacitance_farad": "C1", "warburg_coefficient_ohm_s_half": "W1_sigma"}),
    ("R0-p(R1,C1)-p(R2-W1,C2)", {"series_resistance_ohm": "R0", "sei_resistance_ohm": "R1",
                                 "charge_transfer_resistance_ohm": "R2", "double_layer_capacitance_farad": "C2",
                                 "warburg_coefficient_ohm_s_half": "W1_sigma"}),
)


def lin_kk(freq: np.ndarray, z: np.ndarray, per_decade: float = 6.0, m_fixed: int | None = None) -> dict:
    """Lin-KK test with `per_decade` RC elements per decade of τ (at most N/2). Returns M, μ (reported,
    not used to pick M: on diffusion-dominated spectra it drops below 0.85 long before the fit
    converges), residuals (real, imaginary; fractions of |Z|) and the max |residual|."""
    freq = np.asarray(freq, float)
    z = np.asarray(z, complex)
    w = 2 * np.pi * freq
    wmod = np.abs(z)
    decades = np.log10(w.max() / w.min())
    if m_fixed is None:
        m_fixed = int(np.clip(round(per_decade * decades), 3, max(3, len(freq) // 2)))
    tau = np.logspace(np.log10(1 / w.max()), np.log10(1 / w.min()), m_fixed)
    basis = 1.0 / (1.0 + 1j * w[:, None] * tau[None, :])
    cols = np.column_stack([np.ones_like(w, dtype=complex), basis, 1j * w, 1.0 / (1j * w)])
    a = np.vstack([cols.real / wmod[:, None], cols.imag / wmod[:, None]])
    b = np.r_[z.real / wmod, z.imag / wmod]
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1
    # QR with column pivoting (LAPACK gelsy; rank-revealing like the SVD of numpy's lstsq, at less
    # than half its cost on this 2N × (M + 3) system)
    x, *_ = scipy.linalg.lstsq(a / scale, b, lapack_driver="gelsy")
    x = x / scale
    rk = x[1:m_fixed + 1]
    pos = np.abs(rk[rk >= 0]).sum()
    mu = 1 - np.abs(rk[rk < 0]).sum() / pos if pos > 0 else 0.0
    best = (m_fixed, mu, cols @ x)
    m, mu, zfit = best
    res_re = (z.real - zfit.real) / wmod
    res_im = (z.imag - zfit.imag) / wmod
    dof = max(2 * freq.size - (m + 3), 1)
    return {"m": m, "mu": float(mu), "residual_real": res_re, "residual_imag": res_im,
            "max_residual": float(max(np.abs(res_re).max(), np.abs(res_im).max())),
            "chi2": float((np.sum(res_re ** 2) + np.sum(res_im ** 2)) / dof)}


def warburg_sigma(freq: np.ndarray, z: np.ndarray, window_deg: float = 7.0, min_points: int = 3) -> dict | None:
    """σ (Ω s^-½) from Z' vs ω^-½ over the longest run of points in the 45° region below the arc."""
    order = np.argsort(freq)[::-1]
    f, zz = np.asarray(freq)[order], np.asarray(z)[order]
    mim = -zz.imag
    apex = int(np.argmax(mim[: max(3, len(mim) // 2)]))
    f_apex = f[apex]
    dre, dim = np.diff(zz.real), np.diff(mim)
    ang = np.degrees(np.arctan2(dim, dre))
    good = (np.abs(ang - 45.0) <= window_deg) & (f[1:] < f_apex / 5)
    best, cur = (0, 0), None
    for k, g in enumerate(good):
        if g:
            cur = (cur[0], k + 1) if cur else (k, k + 1)
            if cur[1] - cur[0] > best[1] - best[0]:
                best = cur
        else:
            cur = None
    lo, hi = best[0], best[1] + 1  # points lo..hi-1 (hi-1 = last segment end)
    if hi - lo < min_points:
        return None
    x = 1 / np.sqrt(2 * np.pi * f[lo:hi])
    sigma_re, _ = np.polyfit(x, zz.real[lo:hi], 1)
    sigma_im, _ = np.polyfit(x, mim[lo:hi], 1)
    return {"sigma_ohm_s_half": float(sigma_re), "sigma_imag_ohm_s_half": float(sigma_im),
            "f_min_hertz": float(f[hi - 1]), "f_max_hertz": float(f[lo]), "n_points": int(hi - lo)}


def diffusion_from_sigma(sigma: float, ocv_slope_per_coulomb: float, radius: float) -> float:
    """D (m²/s) = ((−dU/dQ)·R_p/(3√2 σ))² (sphere, with capacity)."""
    return (abs(ocv_slope_per_coulomb) * radius / (3 * math.sqrt(2) * sigma)) ** 2


@dataclass
class EisSettings:
    particle_radius: float | None = None  # m
    ocv_slope_per_coulomb: float | None = None  # V/C; else asked of `ocv_slope` (e.g. from GITT)
    circuits: tuple[tuple[str, dict[str, str]], ...] = DEFAULT_CIRCUITS
    kk_limit: float = 0.01
    aic_margin: float = 10.0  # circuits within this of the lowest AIC count as equal: the simplest wins
    warburg_disagreement: float = 0.10  # |σ_graphical/σ_fit − 1| above this flags "warburg_graphical_disagrees"
    good_fit_kk_ratio: float = 1.0  # a circuit fit with χ² ≤ this × the Lin-KK residual variance tries no further starts
    settle_periods: float = 1.0  # sampled waveforms: periods at the start of each frequency left out (settling)
    waveform_error_limit: float = 0.01  # sampled waveforms: a point's relative error of |Z| above this flags it
    harmonic_limit: float = 0.05  # sampled waveforms: a 2nd harmonic above this share of the fundamental: nonlinear
    ocv_slope: Callable[[], float | None] | None = field(default=None, repr=False)


def analyze_spectrum(freq: np.ndarray, z: np.ndarray, settings: EisSettings,
                     warm_starts: dict[str, np.ndarray] | None = None) -> dict:
    """Lin-KK, σ window, circuit fits and diffusion coefficients of one spectrum.

    `warm_starts` (circuit → parameters, read and updated in place): each circuit is first started
    from its entry (fit_circuit `previous`), and afterwards the entry holds this fit if its χ² is at
    most the Lin-KK level, else it is dropped (the next spectrum starts that circuit cold)."""
    kk = lin_kk(freq, z)
    flags = ["kk_invalid"] if kk["max_residual"] > settings.kk_limit else []
    out: dict = {"frequency_hertz": freq, "real_impedance_ohm": z.real, "imaginary_impedance_ohm": z.imag,
                 "linkk_m": kk["m"], "linkk_mu": kk["mu"], "linkk_max_residual": kk["max_residual"],
                 "linkk_residual_real": kk["residual_real"], "linkk_residual_imag": kk["residual_imag"]}
    sig = warburg_sigma(freq, z)
    out["warburg_window"] = sig
    sigma_graph = sig["sigma_ohm_s_half"] if sig else None
    out["warburg_coefficient_graphical_ohm_s_half"] = sigma_graph
    slope = settings.ocv_slope_per_coulomb
    if slope is None and settings.ocv_slope is not None:
        slope = settings.ocv_slope()
    out["ocv_slope_volt_per_coulomb"] = slope
    r = settings.particle_radius
    if not sig:
        flags.append("no_warburg_region")
    fits, best = [], None
    good_chi2 = settings.good_fit_kk_ratio * kk["chi2"]
    for text, roles in settings.circuits:
        fr = fit_circuit(text, freq, z, good_chi2=good_chi2,
                         previous=warm_starts.get(text) if warm_starts is not None else None)
        if warm_starts is not None:
            if fr.chi2 <= good_chi2 and np.all(np.isfinite(fr.values)):
                warm_starts[text] = fr.values.copy()
            else:
                warm_starts.pop(text, None)
        d = fr.as_dict()
        d["roles"] = {k: d["parameters"].get(v) for k, v in roles.items()}
        d["role_stderr"] = {k: d["stderr"].get(v) for k, v in roles.items()}
        d["n_parameters"] = len(fr.names)
        wc = warburg_coefficient(fr)
        d["warburg_coefficient_ohm_s_half"], d["warburg_coefficient_stderr_ohm_s_half"], d["warburg_element"] = (
            wc if wc else (None, None, None))
        fits.append(d)
    ok = [f for f in fits if f["aic"] is not None and np.isfinite(f["aic"])]
    if ok:
        a_min = min(f["aic"] for f in ok)
        near = [f for f in ok if f["aic"] <= a_min + settings.aic_margin]  # no strong evidence between these
        best = min(near, key=lambda f: (f["n_parameters"], f["aic"]))
    out["fits"] = fits
    sigma, sigma_se = (best["warburg_coefficient_ohm_s_half"], best["warburg_coefficient_stderr_ohm_s_half"]
                       ) if best is not None else (None, None)
    if sigma is None:  # no diffusion element in the best circuit: the graphical slope stands in
        sigma, sigma_se = sigma_graph, None
        if sigma_graph is not None:
            flags.append("warburg_graphical_only")
    elif sigma_graph is not None and abs(sigma_graph / sigma - 1) > settings.warburg_disagreement:
        flags.append("warburg_graphical_disagrees")
    out["warburg_coefficient_ohm_s_half"] = sigma
    out["warburg_coefficient_stderr_ohm_s_half"] = sigma_se
    dd = diffusion_from_sigma(sigma, slope, r) * M2_TO_CM2 if sigma and slope and r else None
    out["diffusion_coefficient_cm2_s"] = dd
    out["diffusion_coefficient_stderr_cm2_s"] = 2 * dd * sigma_se / sigma if dd and sigma_se is not None else None
    out["diffusion_coefficient_graphical_cm2_s"] = (diffusion_from_sigma(sigma_graph, slope, r) * M2_TO_CM2
                                                    if sigma_graph and slope and r else None)
    if best is not None:
        out["best_circuit"] = best["circuit"]
        for key in ("series_resistance_ohm", "charge_transfer_resistance_ohm", "double_layer_capacitance_farad"):
            out[key] = best["roles"].get(key)
            out[key.replace("_ohm", "_stderr_ohm").replace("_farad", "_stderr_farad")] = best["role_stderr"].get(key)
        tau = best["roles"].get("diffusion_time_second")
        out["diffusion_time_second"] = tau
        out["diffusion_coefficient_fit_cm2_s"] = r * r / tau * M2_TO_CM2 if (tau and r) else None
    out["flags"] = flags
    out["valid"] = not set(flags) - INFORMATIVE and sigma is not None
    return out


class EisOperator:
    """One "eis" row per impedance step (technique "eis"), emitted when the sweep ends. The step's rows
    are impedance points (an instrument that measures Z) or the sampled waveform (voltage and current
    with the excitation frequency and no impedance): demodulated here, point by point (waveform.py)."""

    kind = "eis"

    def __init__(self, settings: EisSettings | None = None) -> None:
        self.s = settings or EisSettings()
        self._open = False
        self._buf: list[tuple[np.ndarray, ...]] = []
        self._wave: WaveformImpedance | None = None  # the open step's demodulator, once it has waveform rows
        self._meta: dict = {}
        self.results: list[dict] = []  # rows so far (the Arrhenius operator reads them)
        # each circuit's last fit at the Lin-KK level: the first start of the next spectrum's fit (a
        # series of similar spectra); updated only at the sweep end, so block splits do not matter
        self._warm_starts: dict[str, np.ndarray] = {}

    def feed_event(self, event: Event) -> list[MetricRow]:
        out = []
        if event.kind == "step_start":
            if self._open:
                out = self._finish()
            if event.data.get("technique") == "eis" or event.data.get("step_type") == "EIS":
                self._open, self._buf, self._wave = True, [], None
                self._meta = {"cycle_count": event.cycle_count, "step_count": event.step_count,
                              "start_time_second": event.test_time_second}
        elif event.kind in ("step_end", "run_end", "stop", "abort", "fault") and self._open:
            out = self._finish()
        return out

    def feed_samples(self, rows: Mapping[str, np.ndarray]) -> list[MetricRow]:
        if not self._open or len(rows["test_time_second"]) == 0:
            return []
        cols = [column(rows, c) for c in ("frequency_hertz", "real_impedance_ohm", "imaginary_impedance_ohm",
                                          "temperature_t1_celsius", "test_time_second", "voltage_volt")]
        f_ok = np.isfinite(cols[0]) & (cols[0] > 0)
        z_ok = np.isfinite(cols[1]) & np.isfinite(cols[2])
        ok = f_ok & z_ok
        if ok.any():
            self._buf.append(tuple(c[ok] for c in cols))
        wave = f_ok & ~z_ok
        if wave.any():
            if self._wave is None:
                self._wave = WaveformImpedance(self.s.settle_periods)
            self._wave.feed(rows if wave.all() else {k: np.asarray(v)[wave] for k, v in rows.items()})
        return []

    def _finish(self) -> list[MetricRow]:
        self._open = False
        wave_info: dict = {}
        if self._wave is not None:
            points = self._wave.close()
            if points:
                self._buf.append(tuple(np.array(a, dtype=float) for a in (
                    [p.frequency_hertz for p in points], [p.impedance_ohm.real for p in points],
                    [p.impedance_ohm.imag for p in points], [p.temperature_celsius for p in points],
                    [p.test_time_second for p in points], [p.potential_volt for p in points])))
            err, harm = [p.relative_error for p in points], [p.harmonic for p in points]
            wave_info = {"acquisition": "waveform", "waveform_samples": [p.samples for p in points],
                         "waveform_harmonic": harm, "waveform_max_harmonic": max(harm) if harm else None,
                         "waveform_residual": [p.residual for p in points], "waveform_relative_error": err,
                         "waveform_max_relative_error": max(err) if err else None,
                         "waveform_points_dropped": self._wave.dropped}
            self._wave = None
        if not self._buf:
            return []
        f, re_, im, temp, t, v = (np.concatenate([b[k] for b in self._buf]) for k in range(6))
        self._buf = []
        if f.size < 5:
            return []
        data = analyze_spectrum(f, re_ + 1j * im, self.s, self._warm_starts)
        if wave_info:
            data.update(wave_info)
            if (wave_info["waveform_max_relative_error"] or 0.0) > self.s.waveform_error_limit:
                data["flags"].append("waveform_uncertain")
            if (wave_info["waveform_max_harmonic"] or 0.0) > self.s.harmonic_limit:
                data["flags"].append("waveform_nonlinear")
                data["valid"] = False
        else:
            data["acquisition"] = "spectrum"
        tk = float(np.nanmean(temp)) + KELVIN_OFFSET if np.isfinite(temp).any() else None
        data.update(self._meta)
        data.update({"test_time_second": float(t[-1]), "temperature_kelvin": tk,
                     "potential_volt": float(np.nanmean(v)) if np.isfinite(v).any() else None})
        self.results.append(data)
        return [MetricRow("eis", data)]
