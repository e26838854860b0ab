"""Engine test fixtures: the RC stand-in instrument registered as "rc:NAME"."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from rc_channel import rc_factory  # noqa: E402

from cyclerctl.drivers import registry  # noqa: E402

registry.register("rc", rc_factory)


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"
