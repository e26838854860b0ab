"""dQ/dV keeps whole curves only for selected cycles; peaks and capacities for every half cycle."""

from cyclerctl.analysis.dqdv import keeps_curve


def test_curve_cycles_are_bounded_for_long_tests():
    kept = [c for c in range(1, 12_001) if keeps_curve(c)]
    assert kept[:10] == list(range(1, 11))
    assert {20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000} <= set(kept)
    assert 11 not in kept and 12_000 not in kept and 300 not in kept
    assert len(kept) < 40
