"""What every simulated instrument shares: its clock, its cell, waiting on its clock from a thread."""

from __future__ import annotations

import threading

from ...clock import Clock


def block_until(clock: Clock, t: float, stop: threading.Event | None = None) -> bool:
    """Block the calling (transport) thread until clock.now() >= t; False if `stop` was set first.
    The wait is real time scaled by the clock's speed: an instrument at --speed N runs N x faster."""
    event = stop or threading.Event()
    while True:
        remaining = t - clock.now()
        if remaining <= 0:
            return True
        if event.wait(min(remaining / clock.speed, 0.5)):
            return False


class PlantDriver:
    """Advances a cell model (cyclerctl.sim.plant.Plant or anything with the same methods) to the
    instrument's clock under the instrument's present source, in steps of at most `max_dt`."""

    def __init__(self, plant, clock: Clock, max_dt: float = 0.5) -> None:
        self.plant = plant
        self.clock = clock
        self.max_dt = max_dt
        self.t = clock.now()
        self.lock = threading.RLock()

    def steps(self, until: float | None = None):
        """The (dt) substeps from the last advance to `until` (default: now)."""
        t1 = self.clock.now() if until is None else until
        while self.t < t1 - 1e-6:  # (sub-microsecond remainders are not worth a model step)
            dt = min(self.max_dt, t1 - self.t)
            self.t += dt
            yield dt
