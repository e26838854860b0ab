"""The sphere fit's bounded 1-D minimiser on functions with known minima."""

import math

import pytest

from cyclerctl.analysis.diffusion import bounded_minimum


@pytest.mark.parametrize("f, lo, hi, x_min", [
    (lambda x: (x - 0.3) ** 2, 0.0, 1.0, 0.3),                              # parabola, exact in one step
    (lambda x: math.cosh(x - 0.7) + 0.1 * (x - 0.7) ** 4, -3.0, 4.0, 0.7),  # smooth, not a parabola
    (lambda x: -x * math.exp(-x), 0.0, 5.0, 1.0),                           # skewed, minimum at 1
    (lambda x: abs(x - 0.123456), 0.0, 1.0, 0.123456),                     # kink: golden sections only
    (lambda x: (x - 2.0) ** 2 + 1.0, 1.3, 1.6, 1.6),                        # minimum beyond hi: the edge
    (lambda x: x, 0.0, 1.0, 0.0),                                           # monotone: the lower edge
    (lambda x: 10.0 ** (-x) + 0.5 * x, 0.0, 0.05, 0.05),                   # decreasing on a short bracket
])
def test_finds_known_minimum(f, lo, hi, x_min):
    x = bounded_minimum(f, lo, hi, xtol=1e-10)
    assert lo <= x <= hi
    tol = 1e-10 + 1.5e-8 * abs(x_min)  # the stated stopping rule: xtol + √ε·|x|
    assert abs(x - x_min) <= 2 * tol


def test_few_evaluations_on_a_smooth_minimum():
    calls = []

    def f(x):
        calls.append(x)
        return math.cosh(x - 0.7)

    bounded_minimum(f, 0.0, 2.0, xtol=1e-10)
    assert len(calls) <= 15
    assert len(set(calls)) == len(calls)  # no point evaluated twice


def test_empty_bracket_is_refused():
    with pytest.raises(ValueError, match="lo < hi"):
        bounded_minimum(lambda x: x * x, 1.0, 1.0)
