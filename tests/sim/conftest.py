"""Fixtures of the simulator tests."""

from __future__ import annotations

import pytest

from cyclerctl.sim.preset import load_preset


@pytest.fixture(scope="session")
def hc():
    return load_preset("hard_carbon")


@pytest.fixture(scope="session")
def hc_constant_d(hc):
    """Hard carbon with a constant diffusivity and no SEI, no fade (for exact comparisons)."""
    import dataclasses

    p = hc.with_materials(diffusivity_x=(), diffusivity_values=(), diffusivity=1e-15, fade_linear=0.0,
                          fade_components=())
    return dataclasses.replace(p, sei_capacity=0.0, sei_slow_fraction=0.0)
