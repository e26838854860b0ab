"""dQ/dV by voltage-bin accumulation on an equilibrium MSMR discharge with known peaks."""

import numpy as np
import pytest

from cyclerctl.analysis.base import Event
from cyclerctl.analysis.dqdv import DqdvOperator

F_RT = 96485.33212 / (8.314462618 * 298.15)
SITES = [(0.60, 0.4, 1.0), (0.20, 0.6, 0.5)]  # U0 [V], X, ω
Q_TH = 3.6  # C (1 mAh)


def x_of_u(u):
    return sum(x / (1 + np.exp(F_RT * (u - u0) / w)) for u0, x, w in SITES)


def half_cycles(current=1e-4, record_dv=5e-3, record_dt=60.0):
    """Equilibrium discharge then charge, recorded every `record_dt` s or `record_dv` V."""
    u = np.linspace(1.2, -0.1, 200_001)
    x = x_of_u(u)
    t_end = 0.999 * x[-1] * Q_TH / abs(current) * 0.98
    t_fine = np.linspace(0.0, t_end, 400_001)
    v_fine = np.interp(t_fine * abs(current) / Q_TH, x, u)
    keep = [0]
    for k in range(1, t_fine.size):
        if t_fine[k] - t_fine[keep[-1]] >= record_dt or abs(v_fine[k] - v_fine[keep[-1]]) >= record_dv:
            keep.append(k)
    keep[-1] = t_fine.size - 1
    t, v = t_fine[keep], v_fine[keep]
    n = t.size
    cols = {"test_time_second": np.r_[t, 2 * t[-1] - t[::-1]], "voltage_volt": np.r_[v, v[::-1]],
            "current_ampere": np.r_[np.full(n, -current), np.full(n, current)],
            "cycle_count": np.ones(2 * n), "step_count": np.r_[np.ones(n), np.full(n, 2.0)]}
    events = [Event("step_start", 0.0, 1, 1, 0, {"technique": "gcd"}),
              Event("step_start", float(t[-1]), 1, 2, n, {"technique": "gcd"}),
              Event("run_end", float(2 * t[-1]), 1, 2, 2 * n, {})]
    return cols, events


def run(op, cols, events, splits=()):
    rows, pos = [], 0
    cuts = sorted(set(splits))
    for e in events:
        edges = [pos] + [c for c in cuts if pos < c < e.sample_seq] + [e.sample_seq]
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            rows += op.feed_samples({k: v[a:b] for k, v in cols.items()})
        pos = e.sample_seq
        rows += op.feed_event(e)
    return [r.data for r in rows]


def test_peaks_at_the_site_potentials_and_area_equals_capacity():
    cols, events = half_cycles()
    rows = run(DqdvOperator(active_mass=None, bin_width=1e-3), cols, events)  # FWHM 10 mV ≥ the 5 mV records
    assert [r["direction"] for r in rows] == ["discharge", "charge"]
    for r in rows:
        v = np.array(r["voltage_volt"])
        y = np.array(r["dqdv_mah_v"])
        assert np.trapezoid(y, v) == pytest.approx(r["capacity_ah"] * 1e3, rel=1e-3)
        peaks = sorted(p["voltage_volt"] for p in r["peaks"])
        assert len(peaks) == 2
        for p, (u0, _, _) in zip(peaks, sorted(SITES), strict=True):
            assert abs(p - u0) <= 0.5e-3 + 2e-3
    # peaks keep their ids from one half cycle of the same direction to the next only; both exist here
    assert {p["id"] for p in rows[0]["peaks"]} != set()


def test_same_rows_for_any_block_split():
    cols, events = half_cycles()
    whole = run(DqdvOperator(), cols, events)
    rng = np.random.default_rng(1)
    split = run(DqdvOperator(), cols, events, splits=rng.integers(0, cols["test_time_second"].size, 40))
    for a, b in zip(whole, split, strict=True):
        assert np.allclose(a["dqdv_mah_v"], b["dqdv_mah_v"], rtol=1e-12, atol=1e-12 * max(a["dqdv_mah_v"]))
        for pa, pb in zip(a["peaks"], b["peaks"], strict=True):
            assert pa["id"] == pb["id"] and pa["voltage_volt"] == pb["voltage_volt"]
            assert pa["height"] == pytest.approx(pb["height"], rel=1e-12)
