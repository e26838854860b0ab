"""The sphere fit's 1-D search (Newton on the exact derivative) on functions with known minima, and
the fit's short-time series columns against the same search on the full arrays."""

import math

import numpy as np
import pytest

from cyclerctl.analysis.diffusion import SphereFit, sphere_h, stationary_point


def newton_terms(df, d2f):
    """(derivative, curvature) of a cost from its first and second derivatives."""
    return lambda x: (df(x), d2f(x))


@pytest.mark.parametrize("df, d2f, x0, lo, hi, x_min", [
    (lambda x: 2 * (x - 0.3), lambda x: 2.0, 0.5, 0.0, 1.0, 0.3),                         # parabola
    (lambda x: math.sinh(x - 0.7), lambda x: math.cosh(x - 0.7), 0.0, -3.0, 4.0, 0.7),    # cosh
    (lambda x: (x - 1) * math.exp(-x), lambda x: 1.0, 2.5, 0.0, 5.0, 1.0),               # -x e^-x, poor curvature
    (lambda x: 2 * (x - 2.0), lambda x: 2.0, 1.45, 1.3, 1.6, 1.6),                       # minimum beyond hi: the edge
    (lambda x: 1.0, lambda x: 1.0, 0.5, 0.0, 1.0, 0.0),                                  # monotone: the lower edge
])
def test_finds_known_minimum(df, d2f, x0, lo, hi, x_min):
    x = stationary_point(newton_terms(df, d2f), x0, lo, hi, xtol=1e-12)
    assert lo <= x <= hi
    assert x == pytest.approx(x_min, abs=1e-9)


def test_few_evaluations_and_none_for_a_non_finite_derivative():
    calls = []

    def f(x):
        calls.append(x)
        return math.sinh(x - 0.7), 1.0  # curvature 1 against the true cosh: the secant takes over

    assert stationary_point(f, 0.0, -2.0, 2.0, xtol=1e-12) == pytest.approx(0.7, abs=1e-12)
    assert len(calls) <= 10
    assert stationary_point(lambda x: (math.nan, 1.0), 0.0, -1.0, 1.0, xtol=1e-12) is None


def ici_window(noise=0.0, delay=0.0, seed=0):
    """1-10 s of an interruption on τ_d = 3000 s: E = a + slope·θ(t − t0) with the exact sphere θ."""
    t = np.arange(1.0, 10.0001, 0.1)
    tau_d, slope = 3000.0, -2e-5
    e = 0.4 + slope * tau_d / 3 * sphere_h((t - delay) / tau_d)
    return t, e + noise * np.random.default_rng(seed).standard_normal(t.size), slope, tau_d


@pytest.mark.parametrize("noise, delay", [(0.0, 0.0), (0.0, 0.2), (2e-6, 0.0), (2e-6, 0.2)])
def test_series_columns_find_the_root_of_the_full_derivative(noise, delay):
    """The short-time window is searched on its power-series columns; the τ_d found is where the
    derivative computed on the full arrays (the closed form of h) changes sign, to 1e-12."""
    t, e, slope, tau_true = ici_window(noise, delay)
    fit = SphereFit(t, e, slope)
    for with_delay in (True, False):
        tau_d = fit.fit(delay=with_delay, near=1.3 * tau_true)[0]
        y = math.sqrt(tau_d)
        below, _ = fit._derivative(y * (1 - 1e-12), with_delay)
        above, _ = fit._derivative(y * (1 + 1e-12), with_delay)
        assert below < 0 < above
    if noise == 0.0 and delay == 0.0:  # the exact model: τ_d recovered
        assert fit.fit(delay=False, near=1.3 * tau_true)[0] == pytest.approx(tau_true, rel=1e-9)
