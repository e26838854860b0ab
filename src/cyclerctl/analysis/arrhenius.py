"""Activation energies from R_ct(T) (EIS) and D(T) (GITT/EIS), with uncertainties.

R_ct = RT/(F i₀ A_s) with i₀ ∝ exp(−E_a/RT), so ln(R_ct/T) = E_a/(R T) + const: fit ln(R_ct/T)
against 1/T (the RT correction; the naive ln R_ct fit returns E_a − R·T̄, ≈ 2.5 kJ/mol low at 298 K,
and is reported beside it). D = D₀ exp(−E_a/RT): fit ln D against 1/T, from the EIS rows (D from σ)
and, separately, from the valid GITT pulses (sphere-fit D; per temperature the geometric mean of
the pulses, D spanning decades over a series). Uncertainty: the standard error of the slope (needs
≥ 3 temperatures).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .base import GAS_CONSTANT, Event, MetricRow


def activation_energy(temperature: np.ndarray, y: np.ndarray, sign: float = 1.0) -> tuple[float, float | None]:
    """Slope fit of ln y against 1/T: returns (E_a [J/mol], its standard error or None) with
    E_a = sign·R·slope (sign +1 for resistances, −1 for rate-like quantities such as D)."""
    x = 1.0 / np.asarray(temperature, float)
    ly = np.log(np.asarray(y, float))
    n = x.size
    xm = x - x.mean()
    sxx = float((xm * xm).sum())
    slope = float((xm * (ly - ly.mean())).sum()) / sxx
    se = None
    if n >= 3:
        resid = ly - ly.mean() - slope * xm
        se = math.sqrt(float((resid * resid).sum()) / (n - 2) / sxx) * GAS_CONSTANT
    return sign * GAS_CONSTANT * slope, se


def group_by_temperature(points: list[tuple[float, float]], tolerance: float = 0.5,
                         geometric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean value per temperature (points within `tolerance` K are one temperature), sorted by T;
    `geometric`: the geometric mean (values spanning decades)."""
    pts = sorted(points)
    groups: list[list[tuple[float, float]]] = []
    for p in pts:
        if groups and abs(p[0] - groups[-1][0][0]) <= tolerance:
            groups[-1].append(p)
        else:
            groups.append([p])
    t = np.array([np.mean([g[0] for g in grp]) for grp in groups])
    if geometric:
        v = np.array([math.exp(np.mean([math.log(g[1]) for g in grp])) for grp in groups])
    else:
        v = np.array([np.mean([g[1] for g in grp]) for grp in groups])
    return t, v


class ArrheniusOperator:
    """Reads the EIS operator's results and the GITT rows (`gitt_rows`, the list GittOperator.results
    grows); emits an "arrhenius" row (`source` "eis") each time a spectrum arrives once ≥ 2
    temperatures are known, and one (`source` "gitt") each time a valid GITT pulse arrives once
    valid pulses at ≥ 2 temperatures are known."""

    kind = "arrhenius"

    def __init__(self, eis=None, gitt_rows: list[dict] | None = None, tolerance: float = 0.5) -> None:
        self.eis = eis
        self.gitt_rows = gitt_rows
        self.tolerance = tolerance
        self._seen = 0
        self._seen_gitt = 0

    def feed_samples(self, rows: Mapping[str, np.ndarray]) -> list[MetricRow]:
        return []

    def feed_event(self, event: Event) -> list[MetricRow]:
        return self._from_eis() + self._from_gitt()

    def _from_gitt(self) -> list[MetricRow]:
        """ln D (sphere fit) of the valid GITT pulses against 1/T."""
        rows = self.gitt_rows
        if rows is None or len(rows) == self._seen_gitt:
            return []
        new = rows[self._seen_gitt:]
        self._seen_gitt = len(rows)
        if not any(r.get("valid") for r in new):
            return []
        pts = [(r["temperature_kelvin"], r["diffusion_coefficient_cm2_s"]) for r in rows
               if r.get("valid") and r.get("temperature_kelvin") and (r.get("diffusion_coefficient_cm2_s") or 0) > 0]
        if not pts:
            return []
        t, d = group_by_temperature(pts, self.tolerance, geometric=True)
        if t.size < 2:
            return []
        ea, se = activation_energy(t, d, sign=-1.0)
        last = rows[-1]
        return [MetricRow("arrhenius", {
            "test_time_second": last["test_time_second"], "cycle_count": last.get("cycle_count"), "source": "gitt",
            "diffusion_temperature_kelvin": t, "diffusion_coefficient_cm2_s": d,
            "diffusion_activation_energy_kj_mol": ea / 1e3,
            "diffusion_activation_energy_stderr_kj_mol": None if se is None else se / 1e3})]

    def _from_eis(self) -> list[MetricRow]:
        if self.eis is None or len(self.eis.results) == self._seen:
            return []
        self._seen = len(self.eis.results)
        pts = [(r["temperature_kelvin"], r.get("charge_transfer_resistance_ohm"), r.get("diffusion_coefficient_cm2_s"))
               for r in self.eis.results if r.get("temperature_kelvin")]
        rct = [(t, v) for t, v, _ in pts if v and v > 0]
        dd = [(t, v) for t, _, v in pts if v and v > 0]
        if not rct:
            return []
        t, r = group_by_temperature(rct, self.tolerance)
        if t.size < 2:
            return []
        ea, se = activation_energy(t, r / t)
        ea_naive, _ = activation_energy(t, r)
        data = {"test_time_second": self.eis.results[-1]["test_time_second"],
                "cycle_count": self.eis.results[-1].get("cycle_count"),
                "source": "eis", "temperature_kelvin": t, "charge_transfer_resistance_ohm": r,
                "activation_energy_kj_mol": ea / 1e3,
                "activation_energy_stderr_kj_mol": None if se is None else se / 1e3,
                "activation_energy_uncorrected_kj_mol": ea_naive / 1e3}
        if dd:
            td, d = group_by_temperature(dd, self.tolerance)
            if td.size >= 2:
                ead, sed = activation_energy(td, d, sign=-1.0)
                data.update({"diffusion_temperature_kelvin": td, "diffusion_coefficient_cm2_s": d,
                             "diffusion_activation_energy_kj_mol": ead / 1e3,
                             "diffusion_activation_energy_stderr_kj_mol": None if sed is None else sed / 1e3})
        return [MetricRow("arrhenius", data)]
