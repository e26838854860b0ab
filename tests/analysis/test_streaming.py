"""Streaming equals batch: every operator gives the same rows for any split of the sample stream
(to 1e-12 relative: only the order of floating-point sums changes)."""

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyclerctl.analysis.base import Event
from cyclerctl.analysis.live import operators_for
from cyclerctl.analysis.offline import run_stream
from cyclerctl.analysis.synthetic import gitt_pulse_train, randles_sphere_impedance
from cyclerctl.program import Cell

CELL = Cell(active_mass=3.4e-6, nominal_specific_capacity=300 * 3600.0, particle_radius=3.5e-6)


def mixed_run():
    """GCD cycles, a GITT train, a CV step and an EIS step, as one journal-ordered stream."""
    items: list = []
    rng = np.random.default_rng(7)
    t0, seq, step = 0.0, 0, 0

    def add(cols, data, cyc):
        nonlocal t0, seq, step
        step += 1
        n = cols["voltage_volt"].size
        cols = {k: np.asarray(v, float) for k, v in cols.items()}
        cols["test_time_second"] = cols["test_time_second"] + t0
        cols["cycle_count"] = np.full(n, float(cyc))
        cols["step_count"] = np.full(n, float(step))
        items.append(("event", Event("step_start", t0, cyc, step, seq, data)))
        items.append(("samples", cols))
        seq += n
        t0 = float(cols["test_time_second"][-1])
        items.append(("event", Event("step_end", t0, cyc, step, seq, {"reason": "end"})))

    for cyc in (1, 2, 3):
        for cur in (-1e-4, 1e-4):
            t = np.sort(np.r_[0.0, rng.uniform(0, 3000, 150), 3000.0])
            v = 1.0 - 0.8 * t / 3000 if cur < 0 else 0.2 + 0.8 * t / 3000
            v = v + 0.05 * np.sin(20 * t / 3000)
            add({"test_time_second": t, "voltage_volt": v, "current_ampere": np.full(t.size, cur * (1 - 0.1 * (cyc == 1)))},
                {"technique": "gcd", "current_ampere": cur}, cyc)
    cols, events = gitt_pulse_train(d=1e-15, radius=3.5e-6, q_th=3.6, ocv_slope=-1.0, current=-1e-4, pulse=120.0,
                                    rest=20000.0, n_pulses=3, noise=1e-4, seed=3)
    steps = [e for e in events if e.kind == "step_start"]
    bounds = [e.sample_seq for e in steps] + [cols["test_time_second"].size]
    for e, a, b in zip(steps, bounds[:-1], bounds[1:], strict=True):
        add({k: cols[k][a:b] - (cols["test_time_second"][a] if k == "test_time_second" else 0)
             for k in ("test_time_second", "voltage_volt", "current_ampere")}, e.data, 4)
    for rate in (1e-3, 5e-4):
        e = np.r_[np.linspace(0, 1, 400), np.linspace(1, 0, 400)[1:]]
        i = rate * 1e-3 + 1e-4 * np.sqrt(rate) * np.exp(-((e - 0.5) / 0.05) ** 2) * np.r_[np.ones(400), -np.ones(399)]
        add({"test_time_second": np.arange(e.size) * 2.5e-3 / rate, "voltage_volt": e, "current_ampere": i},
            {"technique": "cv", "scan_rate_volt_per_second": rate}, 4)
    f = np.logspace(5, -2, 50)
    z = randles_sphere_impedance(f, r_s=5, r_ct=60, c_dl=2e-5, ocv_slope=-0.5, tau_d=12250, q_th=2.16)
    add({"test_time_second": np.arange(f.size, dtype=float), "voltage_volt": np.full(f.size, 0.5),
         "current_ampere": np.zeros(f.size), "frequency_hertz": f, "real_impedance_ohm": z.real,
         "imaginary_impedance_ohm": z.imag, "temperature_t1_celsius": np.full(f.size, 25.0)},
        {"technique": "eis", "step_type": "EIS"}, 4)
    items.append(("event", Event("run_end", t0, 4, step, seq, {"status": "completed"})))
    return items


ITEMS = mixed_run()
BATCH = run_stream(operators_for(CELL), ITEMS)


def split(items, cuts):
    out = []
    for kind, item in items:
        if kind != "samples":
            out.append((kind, item))
            continue
        n = item["voltage_volt"].size
        edges = sorted({0, n, *(c % (n + 1) for c in cuts)})
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            out.append(("samples", {k: v[a:b] for k, v in item.items()}))
    return out


def same(a, b, path="row"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{k}]")
    elif isinstance(a, float) and isinstance(b, float):
        # 1e-12 relative; differences of volt-scale values (hysteresis) may differ by rounding, 1e-15 V
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_the_mixed_run_produces_every_kind():
    for kind in ("cycle", "rate", "dqdv", "gitt", "cv", "eis"):
        assert BATCH[kind], kind
    assert all(r.data["valid"] for r in BATCH["gitt"])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=12))
def test_rows_do_not_depend_on_block_splits(cuts):
    live = run_stream(operators_for(CELL), split(ITEMS, cuts))
    for kind, rows in BATCH.items():
        assert len(live[kind]) == len(rows), kind
        for a, b in zip(rows, live[kind], strict=True):
            same(a.data, b.data, kind)
