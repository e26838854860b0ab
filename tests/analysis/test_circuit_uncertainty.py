"""Circuit fits: the reported standard errors are calibrated (the scatter of fitted parameters over
noise seeds matches them), and a constant-phase element's Q and α are recovered."""

import numpy as np
import pytest

from cyclerctl.analysis.circuits import fit_circuit, parse_circuit
from cyclerctl.analysis.synthetic import randles_sphere_impedance

FREQ = np.logspace(5, -2, 71)
RP, D = 3.5e-6, 1e-15
TAU = RP * RP / D
Q_TH = 0.6 * 3.6


def noisy(z, level, seed):
    """Complex noise proportional to |Z| (the fits' modulus weighting)."""
    rng = np.random.default_rng(seed)
    return z * (1 + level * (rng.standard_normal(z.size) + 1j * rng.standard_normal(z.size)) / np.sqrt(2))


def test_parameter_scatter_over_40_seeds_matches_the_reported_standard_errors():
    """Randles with spherical diffusion, 0.2 % noise, 40 seeds: for every parameter the standard
    deviation of the fitted values over the seeds, divided by the mean reported standard error, is
    within 0.6–1.5 (measured 0.89–1.05; with 40 seeds the scatter itself is known to about ±11 %)."""
    z0 = randles_sphere_impedance(FREQ, r_s=5.0, r_ct=60.0, c_dl=20e-6, ocv_slope=-0.5, tau_d=TAU, q_th=Q_TH)
    values, stderr = [], []
    for seed in range(40):
        fit = fit_circuit("R0-p(R1-Sph1,C1)", FREQ, noisy(z0, 0.002, seed))
        values.append(fit.values)
        stderr.append(fit.stderr)
    names = fit.names
    assert names == ["R0", "R1", "Sph1_A", "Sph1_tau", "C1"]
    values, stderr = np.array(values), np.array(stderr)
    assert np.all(np.isfinite(stderr)) and np.all(stderr > 0)
    sph_a = 0.5 * TAU / (3 * Q_TH)  # (−dU/dx)·τ_d/(3Q_th)
    np.testing.assert_allclose(values.mean(axis=0), [5.0, 60.0, sph_a, TAU, 20e-6], rtol=0.03)  # τ 1.8 % high
    ratio = values.std(axis=0, ddof=1) / stderr.mean(axis=0)
    for name, r in zip(names, ratio, strict=True):
        assert 0.6 <= r <= 1.5, f"{name}: scatter / stderr = {r:.3f}"


@pytest.mark.parametrize("alpha", [0.65, 0.85])
def test_constant_phase_element_q_and_alpha_recovered_within_1_percent(alpha):
    """R0-p(R1,CPE1) with Q = 2e-5 F s^(α−1), 0.2 % noise, five seeds: Q and α within 1 %, R0 and R1
    as well; noise-free to 1e-6."""
    circuit = "R0-p(R1,CPE1)"
    truth = np.array([5.0, 60.0, 2e-5, alpha])
    assert parse_circuit(circuit).names == ["R0", "R1", "CPE1_Q", "CPE1_alpha"]
    z0 = parse_circuit(circuit).impedance(truth, FREQ)
    np.testing.assert_allclose(fit_circuit(circuit, FREQ, z0).values, truth, rtol=1e-6)
    for seed in range(5):
        fit = fit_circuit(circuit, FREQ, noisy(z0, 0.002, seed))
        np.testing.assert_allclose(fit.values, truth, rtol=0.01)
