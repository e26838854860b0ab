"""Fixtures of the driver tests. The simulated-instrument helpers live in instrument_servers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # driverkit, instrument_servers (importlib import mode)

from instrument_servers import make_plant  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _warm_plant():
    """Compile the cell model's kernel once per session (numba), outside any timed instrument run."""
    p = make_plant()
    p.advance_current(-1e-4, 0.5)
    p.advance_voltage(0.5, 0.5)
    p.impedance([1.0])


