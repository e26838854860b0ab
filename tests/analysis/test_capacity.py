"""Coulomb counting, coulombic efficiency (anode and cathode conventions), retention, rate table."""

import numpy as np
import pytest

from cyclerctl.analysis.base import Event
from cyclerctl.analysis.capacity import CycleOperator


def gcd_cycles(currents, durations, rng, v_dis=(1.0, 0.0), v_chg=(0.0, 1.0), rest=60.0):
    """Cycles of (discharge at -|I|, rest, charge at +|I|) with irregular sample times.
    Each item of `currents` is (I_dis, I_chg) for one cycle, `durations` (t_dis, t_chg)."""
    cols = {k: [] for k in ("test_time_second", "voltage_volt", "current_ampere", "cycle_count", "step_count")}
    events, t0, step, seq = [], 0.0, 0, 0
    for cyc, ((i_d, i_c), (t_d, t_c)) in enumerate(zip(currents, durations, strict=True), start=1):
        for cur, dur, (va, vb) in ((i_d, t_d, v_dis), (0.0, rest, (0.0, 0.0)), (i_c, t_c, v_chg)):
            step += 1
            tt = np.sort(np.r_[0.0, rng.uniform(0, dur, 200), dur])
            events.append(Event("step_start", t0, cyc, step, seq, {"technique": "gcd" if cur else "rest",
                                                                   "current_ampere": cur}))
            cols["test_time_second"].append(t0 + tt)
            cols["voltage_volt"].append(va + (vb - va) * tt / dur)
            cols["current_ampere"].append(np.full(tt.size, cur))
            cols["cycle_count"].append(np.full(tt.size, float(cyc)))
            cols["step_count"].append(np.full(tt.size, float(step)))
            seq += tt.size
            t0 += dur
    events.append(Event("run_end", t0, len(currents), step, seq, {}))
    return {k: np.concatenate(v) for k, v in cols.items()}, events


def run(op, cols, events):
    rows, pos = [], 0
    for e in events:
        rows += op.feed_samples({k: v[pos:e.sample_seq] for k, v in cols.items()})
        pos = e.sample_seq
        rows += op.feed_event(e)
    rows += op.feed_samples({k: v[pos:] for k, v in cols.items()})
    return rows


def test_coulomb_counting_is_exact_and_lossless_ce_is_one():
    rng = np.random.default_rng(3)
    i = 1.234567e-4
    cols, events = gcd_cycles([(-i, i)] * 3, [(3600.0 * 7.3, 3600.0 * 7.3)] * 3, rng)
    op = CycleOperator(active_mass=3.4e-6)
    rows = [r for r in run(op, cols, events) if r.kind == "cycle"]
    assert [r.data["cycle_count"] for r in rows] == [1, 2, 3]
    q = i * 3600.0 * 7.3
    for r in rows:
        assert r.data["discharge_capacity_c"] == pytest.approx(q, rel=1e-9)
        assert r.data["charge_capacity_ah"] == pytest.approx(q / 3600, rel=1e-9, abs=0)
        assert abs(r.data["coulombic_efficiency"] - 1.0) < 1e-9
        assert r.data["specific_charge_capacity_mah_g"] == pytest.approx(q / 3.6 / 3.4e-3, rel=1e-9)
        assert r.data["mean_discharge_voltage_volt"] == pytest.approx(0.5, rel=1e-9)
        assert r.data["voltage_hysteresis_volt"] == pytest.approx(0.0, abs=1e-9)
        assert r.data["cumulative_irreversible_capacity_ah"] == pytest.approx(0.0, abs=1e-15)


def test_anode_convention_ce_is_desodiation_over_sodiation():
    """Anode half cell: sodiation (discharge) first; CE = charge/discharge. A cathode cell (cycles start
    on the charge) uses discharge/charge: the same data give the inverse."""
    rng = np.random.default_rng(4)
    cols, events = gcd_cycles([(-1e-4, 1e-4)] * 2, [(1000.0, 850.0), (1000.0, 990.0)], rng)
    anode = [r for r in run(CycleOperator(), cols, events) if r.kind == "cycle"]
    assert anode[0].data["coulombic_efficiency"] == pytest.approx(0.85, rel=1e-12)
    assert anode[0].data["initial_coulombic_efficiency"] == pytest.approx(0.85, rel=1e-12)
    assert anode[1].data["coulombic_efficiency"] == pytest.approx(0.99, rel=1e-12)
    irr = (1000 - 850 + 1000 - 990) * 1e-4 / 3600
    assert anode[1].data["cumulative_irreversible_capacity_ah"] == pytest.approx(irr, rel=1e-12, abs=0)
    cathode = [r for r in run(CycleOperator(cycle_starts_on="charge"), cols, events) if r.kind == "cycle"]
    assert cathode[0].data["coulombic_efficiency"] == pytest.approx(1 / 0.85, rel=1e-12)


def test_retention_against_a_reference_cycle_and_current_for_loop_conditions():
    rng = np.random.default_rng(5)
    t_chg = [1000.0, 950.0, 900.0, 855.0]
    cols, events = gcd_cycles([(-1e-4, 1e-4)] * 4, [(1000.0, t) for t in t_chg], rng)
    op = CycleOperator(active_mass=2e-6, reference_cycle=2)
    rows = [r for r in run(op, cols, events) if r.kind == "cycle"]
    assert rows[-1].data["capacity_retention"] == pytest.approx(855 / 950, rel=1e-12)
    cur = op.current()
    assert cur["cycle_count"] == 4
    assert cur["capacity_retention"] == pytest.approx(855 / 950, rel=1e-12)
    assert op.current(reference_cycle=1)["capacity_retention"] == pytest.approx(0.855, rel=1e-12)
    assert cur["coulombic_efficiency"] == pytest.approx(0.855, rel=1e-12)
    assert cur["charge_capacity"] == pytest.approx(1e-4 * 855, rel=1e-9)  # coulombs
    assert cur["specific_charge_capacity"] == pytest.approx(1e-4 * 855 / 2e-6, rel=1e-9)  # C/kg
    assert CycleOperator().current()["coulombic_efficiency"] is None


def test_rate_table_groups_cycles_by_discharge_current():
    rng = np.random.default_rng(6)
    currents = [(-1e-4, 1e-4)] * 2 + [(-2e-4, 1e-4)] * 3 + [(-1e-4, 1e-4)]
    durations = [(1000.0, 1000.0)] * 2 + [(450.0, 900.0)] * 3 + [(1000.0, 1000.0)]
    cols, events = gcd_cycles(currents, durations, rng)
    rates = [r.data for r in run(CycleOperator(active_mass=1e-6), cols, events) if r.kind == "rate"]
    assert [(r["first_cycle"], r["last_cycle"]) for r in rates] == [(1, 2), (3, 5), (6, 6)]
    assert rates[1]["discharge_current_ampere"] == pytest.approx(-2e-4, rel=1e-9)
    assert rates[1]["specific_current_ma_g"] == pytest.approx(200.0, rel=1e-9)
    assert rates[1]["mean_discharge_capacity_ah"] == pytest.approx(2e-4 * 450 / 3600, rel=1e-9, abs=0)
    assert rates[1]["mean_coulombic_efficiency"] == pytest.approx(1e-4 * 900 / (2e-4 * 450), rel=1e-9)


def test_cv_and_eis_steps_are_not_counted():
    op = CycleOperator()
    op.feed_event(Event("step_start", 0.0, 1, 1, 0, {"technique": "cv"}))
    t = np.linspace(0, 100, 11)
    rows = op.feed_samples({"test_time_second": t, "voltage_volt": np.zeros(11), "current_ampere": np.full(11, 1e-3),
                            "cycle_count": np.ones(11), "step_count": np.ones(11)})
    rows += op.feed_event(Event("run_end", 100.0, 1, 1, 11, {}))
    assert rows == []


def _noisy_rest(op, step, t0, n, rng, data):
    """A 10 s-record rest step with instrument noise (~nA, zero mean) on the current."""
    op.feed_event(Event("step_start", t0, 1, step, 0, data))
    t = t0 + np.arange(n) * 10.0
    return op.feed_samples({"test_time_second": t, "voltage_volt": 1.26 + 1e-4 * rng.standard_normal(n),
                            "current_ampere": 1e-9 * rng.standard_normal(n), "cycle_count": np.ones(n),
                            "step_count": np.full(n, float(step))})


@pytest.mark.parametrize("data", [{"technique": "rest", "step_type": "REST"}, {"technique": "ocv"},
                                  {"step_type": "OCV"}, {"technique": "temperature", "step_type": "TEMP"},
                                  {"technique": "gitt", "step_type": "REST", "tags": {"role": "relax"}}])
def test_noise_during_a_rest_is_no_cycle(data):
    """A run of rests (open circuit: the current read is instrument noise) has no cycle row, so no CE,
    no ICE and no rate row, whether the step says so by technique or by step type."""
    op = CycleOperator(active_mass=4.3e-6)
    rng = np.random.default_rng(7)
    rows = _noisy_rest(op, 1, 0.0, 721, rng, data)
    rows += _noisy_rest(op, 2, 7210.0, 100, rng, data)
    rows += op.feed_event(Event("run_end", 8210.0, 1, 2, 821, {}))
    assert rows == []
    assert op.last is None and op.current()["coulombic_efficiency"] is None


def test_rest_noise_does_not_change_a_cycle():
    """Noise in the rests between GCD steps is not counted: the capacities are the steps' exactly."""
    rng = np.random.default_rng(8)
    i = 1e-4
    cols, events = gcd_cycles([(-i, i)] * 2, [(1000.0, 900.0)] * 2, rng)
    rest = np.flatnonzero(np.isin(cols["step_count"], [2.0, 5.0]))
    cols["current_ampere"][rest] = 3e-9 * rng.standard_normal(rest.size) + 2e-9  # noise with an offset
    events = [Event(e.kind, e.test_time_second, e.cycle_count, e.step_count, e.sample_seq,
                    {**e.data, "step_type": "REST"} if e.data.get("technique") == "rest" else e.data)
              for e in events]
    rows = [r.data for r in run(CycleOperator(), cols, events) if r.kind == "cycle"]
    assert [r["cycle_count"] for r in rows] == [1, 2]
    for r in rows:
        assert r["discharge_capacity_c"] == pytest.approx(i * 1000.0, rel=1e-12)
        assert r["charge_capacity_c"] == pytest.approx(i * 900.0, rel=1e-12)
        assert r["coulombic_efficiency"] == pytest.approx(0.9, rel=1e-12)


def _segment_sums_reference(t, v, i, sc, cyc, prev, excluded):
    """The interval sums of _segment_sums written out with masks, one cycle run at a time."""
    tt, vv, ii, ss = (np.r_[p, x] for p, x in zip(prev, (t, v, i, sc), strict=True))
    dt = np.diff(tt)
    dq = 0.5 * (ii[1:] + ii[:-1]) * dt
    vi = vv * np.abs(ii)
    de = 0.5 * (vi[1:] + vi[:-1]) * dt
    with np.errstate(invalid="ignore"):
        ok = (ss[:-1] == sc) & np.isfinite(dq) & (dt >= 0) & ~np.isin(sc, excluded)
    c = np.where(np.isfinite(cyc), cyc, 1.0).astype(np.int64)
    starts = np.r_[0, np.flatnonzero(c[1:] != c[:-1]) + 1]
    sums = []
    for a, b in zip(starts, np.r_[starts[1:], t.size], strict=True):
        k = slice(a, b)
        neg, pos = ok[k] & (dq[k] < 0), ok[k] & (dq[k] > 0)
        fin = np.isfinite(de[k])
        sums.append([dq[k][neg].sum(), dq[k][pos].sum(), de[k][neg & fin].sum(), de[k][pos & fin].sum(),
                     dt[k][neg].sum(), dt[k][pos].sum()])
    return starts, c[starts], np.array(sums)


def test_segment_sums_equal_masked_reference():
    """The compiled one-pass block sums equal the masked numpy sums on blocks with NaNs, steps that
    do not count, cycle changes inside the block, zero and negative time steps."""
    from cyclerctl.analysis.capacity import _segment_sums

    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(1, 60))
        t = np.cumsum(rng.choice([0.0, 1.0, 2.5, -1.0], n, p=[0.1, 0.5, 0.35, 0.05]))
        v = rng.uniform(0, 2, n)
        i = rng.choice([-1e-3, 0.0, 2e-3], n)
        sc = np.sort(rng.integers(1, 5, n)).astype(float)
        cyc = np.sort(rng.integers(1, 4, n)).astype(float)
        for arr in (v, i, cyc):
            arr[rng.random(n) < 0.05] = np.nan
        prev = tuple(rng.choice([np.nan, 0.5])for _ in range(4))
        excluded = np.array(sorted(set(rng.integers(1, 5, 2).astype(float))))
        got = _segment_sums(t, v, i, sc, cyc, *map(float, prev), excluded)
        want = _segment_sums_reference(t, v, i, sc, cyc, prev, excluded)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[2], want[2], rtol=1e-12, atol=1e-18)


def test_energy_and_mean_voltages_of_linear_voltage_ramps():
    """Discharge at 2e-4 A with V falling 1.2 -> 0.1 V, charge at 1e-4 A with V rising 0.3 -> 1.5 V,
    random sample times: V·|I| is linear in t, so the trapezoid is exact. E = |I|·t·(V_a + V_b)/2,
    V̄ = E/Q, hysteresis V̄_charge − V̄_discharge."""
    rng = np.random.default_rng(8)
    t_d, t_c = 5000.0, 7000.0
    cols, events = gcd_cycles([(-2e-4, 1e-4)] * 2, [(t_d, t_c)] * 2, rng, v_dis=(1.2, 0.1), v_chg=(0.3, 1.5))
    rows = [r.data for r in run(CycleOperator(active_mass=3.4e-6), cols, events) if r.kind == "cycle"]
    assert len(rows) == 2
    for r in rows:
        assert r["discharge_energy_wh"] == pytest.approx(2e-4 * t_d * 0.65 / 3600, rel=1e-9, abs=0)
        assert r["charge_energy_wh"] == pytest.approx(1e-4 * t_c * 0.9 / 3600, rel=1e-9, abs=0)
        assert r["mean_discharge_voltage_volt"] == pytest.approx(0.65, rel=1e-9, abs=0)
        assert r["mean_charge_voltage_volt"] == pytest.approx(0.9, rel=1e-9, abs=0)
        assert r["voltage_hysteresis_volt"] == pytest.approx(0.25, rel=1e-9, abs=0)
