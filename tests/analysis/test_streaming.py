"""Streaming equals batch: every operator gives the same rows for any split of the sample stream
(to 1e-12 relative: only the order of floating-point sums changes; fields that are differences of
near-equal values, hence near zero, have an absolute tolerance of their own)."""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyclerctl.analysis.live import operators_for
from cyclerctl.analysis.offline import run_stream
from cyclerctl.analysis.synthetic import mixed_stream
from cyclerctl.program import Cell

CELL = Cell(active_mass=3.4e-6, nominal_specific_capacity=300 * 3600.0, particle_radius=3.5e-6)
# V̄_charge − V̄_discharge of ~1 V means (4e-5 V in the mixed stream) and Σ(Q_first − Q_second) of equal
# half cycles (exactly 0, ~1e-20 Ah by rounding): a block split moves them by a few ulps of the terms
NEAR_ZERO = {"voltage_hysteresis_volt": 1e-14, "cumulative_irreversible_capacity_ah": 1e-18}


ITEMS = mixed_stream()
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


def same(a, b, path="row", field=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}", k)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{k}]", field)
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=NEAR_ZERO.get(field, 0.0)), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_the_mixed_run_produces_every_kind():
    for kind in ("cycle", "rate", "dqdv", "gitt", "cv", "eis"):
        assert BATCH[kind], kind
    assert [r.data["valid"] for r in BATCH["gitt"]] == [False, True, True]  # the first: OCV curvature unknown


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=12))
def test_rows_do_not_depend_on_block_splits(cuts):
    live = run_stream(operators_for(CELL), split(ITEMS, cuts))
    for kind, rows in BATCH.items():
        assert len(live[kind]) == len(rows), kind
        for a, b in zip(rows, live[kind], strict=True):
            same(a.data, b.data, kind)


def test_one_sample_blocks_give_the_rows_of_one_block():
    """Real-time acquisition hands every sample over as a block of its own, which the cycle and GITT
    operators take on Python floats: the rows equal those of the whole stream in blocks."""
    ones = []
    for kind, item in ITEMS:
        if kind != "samples":
            ones.append((kind, item))
            continue
        ones += [("samples", {k: v[j:j + 1] for k, v in item.items()}) for j in range(item["voltage_volt"].size)]
    live = run_stream(operators_for(CELL), ones)
    for kind, rows in BATCH.items():
        assert len(live[kind]) == len(rows), kind
        for a, b in zip(rows, live[kind], strict=True):
            same(a.data, b.data, kind)
