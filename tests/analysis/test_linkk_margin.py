"""Lin-KK against corrupted spectra, with a margin: clean and noisy spectra stay well below the 1 %
limit, spectra broken three ways (a drift during the low-frequency half, R_ct changing with time
through the sweep, a real part distorted without its imaginary part) at least twice above it."""

import numpy as np
import pytest

from cyclerctl.analysis.eis import EisSettings, analyze_spectrum, lin_kk
from cyclerctl.analysis.synthetic import randles_sphere_impedance

RP, D = 3.5e-6, 1e-15
TAU = RP * RP / D
Q_TH = 0.6 * 3.6
FREQ = np.logspace(5, -2, 71)
LIMIT = EisSettings().kk_limit


def randles(r_ct=60.0, freq=FREQ):
    return randles_sphere_impedance(freq, r_s=5.0, r_ct=r_ct, c_dl=20e-6, ocv_slope=-0.5, tau_d=TAU, q_th=Q_TH)


def noisy(z, level, seed):
    rng = np.random.default_rng(seed)
    return z * (1 + level * (rng.standard_normal(z.size) + 1j * rng.standard_normal(z.size)) / np.sqrt(2))


def drift_low_half():
    """|Z| of the low-frequency half rising to +20 % (the cell changing while the slow points run)."""
    z = randles()
    half = FREQ.size // 2
    z[half:] *= np.linspace(1.0, 1.2, FREQ.size - half)
    return z


def r_ct_changing_in_time():
    """Each point measured at its own R_ct, rising 60 → 90 Ω through the sweep (SEI growth, warming)."""
    r_ct = np.linspace(60.0, 90.0, FREQ.size)
    return np.array([randles(r, FREQ[k:k + 1])[0] for k, r in enumerate(r_ct)])


def real_part_distorted():
    """Below 1 Hz the real part 5 % high, the imaginary part untouched: no causal linear system."""
    z = randles()
    return np.where(FREQ < 1.0, 1.05, 1.0) * z.real + 1j * z.imag


def test_clean_and_noisy_spectra_pass_with_margin():
    assert lin_kk(FREQ, randles())["max_residual"] < 0.1 * LIMIT  # 0.06 %
    for seed in range(5):  # 0.2 % noise: up to 0.43 %
        assert lin_kk(FREQ, noisy(randles(), 0.002, seed))["max_residual"] < 0.5 * LIMIT


@pytest.mark.parametrize("corrupt", [drift_low_half, r_ct_changing_in_time, real_part_distorted])
def test_corrupted_spectra_are_flagged_at_twice_the_limit(corrupt):
    z = corrupt()
    assert lin_kk(FREQ, z)["max_residual"] >= 2 * LIMIT  # 3.0 %, 2.7 %, 2.9 %
    out = analyze_spectrum(FREQ, z, EisSettings())
    assert out["linkk_max_residual"] >= 2 * LIMIT
    assert "kk_invalid" in out["flags"] and not out["valid"]
