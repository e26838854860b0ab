"""The compiled smoothing and peak finding of the dQ/dV close equal scipy's (correlate1d with
mode="constant", find_peaks with a prominence threshold) on random and adversarial arrays."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.ndimage import correlate1d, gaussian_filter1d
from scipy.signal import find_peaks

from cyclerctl.analysis.base import Event
from cyclerctl.analysis.dqdv import DqdvOperator, find_peaks_prominence, smooth


def scipy_peaks(y, p):
    idx, props = find_peaks(y, prominence=p)
    return idx, props["prominences"]


def assert_same_peaks(y, p):
    idx, prom = find_peaks_prominence(np.asarray(y, dtype=np.float64), float(p))
    ref_idx, ref_prom = scipy_peaks(np.asarray(y, dtype=np.float64), float(p))
    assert idx.tolist() == ref_idx.tolist()
    assert prom.tolist() == ref_prom.tolist()  # the same numbers, not just close


# small integer levels make plateaus, ties and equal bases common
levels = arrays(np.float64, st.integers(0, 40), elements=st.integers(0, 6).map(float))
reals = arrays(np.float64, st.integers(0, 200),
               elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False))


@settings(max_examples=400, deadline=None)
@given(levels, st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 6.0, 7.0]))
def test_peaks_equal_scipy_on_plateaus_and_ties(y, p):
    assert_same_peaks(y, p)


@settings(max_examples=300, deadline=None)
@given(reals, st.floats(0.0, 2e3, allow_nan=False))
def test_peaks_equal_scipy_on_random_reals(y, p):
    assert_same_peaks(y, p)


@pytest.mark.parametrize("y", [
    [], [1.0], [1.0, 2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0],
    [3.0, 1.0, 3.0],  # maxima at the ends are not peaks
    [0.0, 2.0, 2.0, 0.0],  # even flat top: the lower middle
    [0.0, 2.0, 2.0, 2.0, 0.0], [0.0, 2.0, 2.0, 2.0, 2.0, 1.0],
    [0.0, 2.0, 2.0, 2.0],  # a flat top running into the end is no peak
    [0.0, 1.0, 0.0, 1.0, 0.0],  # equal neighbours: the higher base is the shared valley
    [5.0, 0.0, 3.0, 1.0, 3.0, 0.0, 5.0],  # bases stop at the strictly higher sample
    [0.0, 3.0, 1.0, 3.0, 2.0, 3.0, 0.0],  # equal tops do not stop the walk
    [0.0, 1.0, -1.0, 4.0, -2.0, 1.0, 0.0],
])
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0, 2.0, 3.0, 10.0])
def test_peaks_equal_scipy_on_edge_cases(y, p):
    assert_same_peaks(y, p)


def test_peaks_equal_scipy_on_noisy_dqdv_like_curves():
    rng = np.random.default_rng(7)
    x = np.arange(1000)
    for _ in range(300):
        y = sum(rng.uniform(0.1, 5) * np.exp(-0.5 * ((x - rng.uniform(0, 1000)) / rng.uniform(3, 60)) ** 2)
                for _ in range(rng.integers(1, 6)))
        y = np.clip(y + rng.normal(0, rng.uniform(0, 0.05), x.size), 0, None)
        y[:rng.integers(0, 20)] = 0.0
        assert_same_peaks(y, rng.choice([0.0, 0.01, 0.05, 0.2]) * y.max())


def kernel(sigma):
    r = int(4.0 * sigma + 0.5)
    impulse = np.zeros(2 * r + 1)
    impulse[r] = 1.0
    return gaussian_filter1d(impulse, sigma, mode="constant")


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(0, 300), elements=st.floats(0.0, 1e6, allow_nan=False)),
       st.floats(0.3, 6.0), st.floats(1e-4, 1e-2), st.floats(1e-3, 1e3))
def test_smoothing_equals_correlate1d(x, sigma, width, scale):
    w = kernel(sigma)
    ref = correlate1d(x / width * scale, w, mode="constant")
    got = smooth(x, w, width, scale)
    assert np.allclose(got, ref, rtol=1e-15, atol=0.0)
    assert np.array_equal(smooth(x, w), correlate1d(x, w, mode="constant"))


def test_close_matches_the_scipy_pipeline_on_a_half_cycle():
    """The operator's row against smoothing and peaks done with scipy on the same bins."""
    op = DqdvOperator(active_mass=1e-6)
    v = np.linspace(1.0, 0.05, 400)
    q_rate = 1 + 8 * np.exp(-0.5 * ((v - 0.6) / 0.02) ** 2) + 4 * np.exp(-0.5 * ((v - 0.2) / 0.03) ** 2)
    t = np.r_[0.0, np.cumsum(q_rate[1:] * 10.0)]
    n = v.size
    op.feed_samples({"test_time_second": t, "voltage_volt": v, "current_ampere": np.full(n, -1e-4),
                     "step_count": np.ones(n), "cycle_count": np.ones(n)})
    bins, lo, hi = op.bin_charge(), op._lo, op._hi
    (row,) = op.feed_event(Event("run_end", float(t[-1])))
    sigma = op.fwhm / (2 * np.sqrt(2 * np.log(2))) / op.width
    margin = int(4 * sigma) + 2
    k0 = max(0, int((lo - op.v_min) / op.width) - margin)
    k1 = min(op.n, int((hi - op.v_min) / op.width) + margin)
    y = correlate1d(bins[k0:k1] / op.width * (1 / 3.6 / 1e-3), kernel(sigma), mode="constant")
    idx, props = find_peaks(y, prominence=op.prominence * float(y.max()))
    volts = 0.5 * (op.edges[k0:k1] + op.edges[k0 + 1:k1 + 1])
    assert len(idx) == 2
    assert np.allclose(row.data["dqdv_mah_g_v"], y, rtol=1e-15, atol=0.0)
    assert [p["voltage_volt"] for p in row.data["peaks"]] == volts[idx].tolist()
    assert [p["prominence"] for p in row.data["peaks"]] == pytest.approx(props["prominences"].tolist(), rel=1e-14)


def cycling(n_cycles=4, per_half=300):
    """Galvanostatic half cycles with two dQ/dV features each, as journal columns (steps 1, 2, ...)."""
    cols = {k: [] for k in ("test_time_second", "voltage_volt", "current_ampere", "step_count", "cycle_count")}
    q = np.linspace(0, 1, per_half)
    t0, step = 0.0, 0
    for c in range(1, n_cycles + 1):
        for cur in (-1e-4, 1e-4):
            step += 1
            shift = 0.004 * c
            v = (1.0 - 0.9 * q - 0.05 * np.tanh((q - 0.6) * 30) - 0.03 * np.tanh((q - 0.3 - shift) * 40)
                 if cur < 0 else 0.1 + 0.9 * q + 0.05 * np.tanh((q - 0.4) * 30) + 0.03 * np.tanh((q - 0.7 + shift) * 40))
            for k, a in (("test_time_second", t0 + q * 3600), ("voltage_volt", v), ("current_ampere", np.full(q.size, cur)),
                         ("step_count", np.full(q.size, float(step))), ("cycle_count", np.full(q.size, float(c)))):
                cols[k].append(a)
            t0 += 3601.0
    return {k: np.concatenate(a) for k, a in cols.items()}


def feed(cols, cuts):
    op, rows = DqdvOperator(active_mass=1e-6), []
    edges = [0, *sorted(set(cuts)), cols["test_time_second"].size]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        rows += op.feed_samples({k: v[a:b] for k, v in cols.items()})
    rows += op.feed_event(Event("run_end", float(cols["test_time_second"][-1])))
    return [r.data for r in rows]


def test_many_half_cycles_in_one_block_equal_one_block_per_half_cycle():
    cols = cycling()
    whole = feed(cols, [])
    per_step = feed(cols, list(range(300, cols["test_time_second"].size, 300)))
    assert len(whole) == 8 and whole == per_step  # each half cycle's intervals summed in the same order
    assert all(len(r["peaks"]) == 3 for r in whole)
    assert [p["id"] for p in whole[2]["peaks"]] == [p["id"] for p in whole[0]["peaks"]]  # tracked


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 2399), max_size=30))
def test_any_block_split_gives_the_same_rows(cuts):
    cols = cycling()
    whole, split = feed(cols, []), feed(cols, cuts)
    assert len(split) == len(whole)
    for a, b in zip(whole, split, strict=True):
        assert [p["id"] for p in a["peaks"]] == [p["id"] for p in b["peaks"]]
        assert [p["voltage_volt"] for p in a["peaks"]] == [p["voltage_volt"] for p in b["peaks"]]
        assert b["capacity_ah"] == pytest.approx(a["capacity_ah"], rel=1e-12)
        assert np.allclose(b["dqdv_mah_g_v"], a["dqdv_mah_g_v"], rtol=1e-12, atol=1e-12 * max(a["dqdv_mah_g_v"]))
