"""Time comes from a Clock. Engine, drivers and simulator never call time.time() or asyncio.sleep().

- VirtualClock: simulated time that jumps; the simulator runs as fast as the CPU allows, tests are
  deterministic.
- WallClock: monotonic wall time, optionally accelerated by `speed` (for simulated instruments
  running N times faster than real time; real hardware always runs at speed 1).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Seconds on a monotonic time axis, and waiting on it."""

    speed: float

    def now(self) -> float:
        """Current time in seconds (monotonic; origin arbitrary but fixed for the clock's life)."""

    def unix(self) -> float:
        """Unix time (UTC seconds) corresponding to now()."""

    async def sleep_until(self, t: float) -> None:
        """Return once now() >= t."""

    async def sleep(self, dt: float) -> None:
        """Return once dt seconds of this clock have passed."""


class VirtualClock:
    """Simulated time. sleep/sleep_until advance time instantly (and yield to the event loop once)."""

    speed = float("inf")

    def __init__(self, start: float = 0.0, unix_epoch: float = 1_767_225_600.0) -> None:
        self._t = float(start)
        self._unix0 = unix_epoch  # 2026-01-01T00:00:00Z, fixed so runs are reproducible

    def now(self) -> float:
        return self._t

    def unix(self) -> float:
        return self._unix0 + self._t

    def advance_to(self, t: float) -> None:
        if t > self._t:
            self._t = float(t)

    async def sleep_until(self, t: float) -> None:
        self.advance_to(t)
        await asyncio.sleep(0)

    async def sleep(self, dt: float) -> None:
        await self.sleep_until(self._t + max(0.0, dt))


class WallClock:
    """Monotonic wall time, scaled by `speed` (1 = real time).

    tick: wall seconds of wake-up granularity. 0: every sleeper has its own timer. > 0: sleepers
    due in the same tick share one timer that wakes them all (many channels sampling at the same
    rate cost one timer per tick instead of one each); a wake-up is then up to one tick late."""

    def __init__(self, speed: float = 1.0, tick: float = 0.0) -> None:
        if not speed > 0:
            raise ValueError("clock speed must be > 0")
        if not tick >= 0:
            raise ValueError("clock tick must be >= 0")
        self.speed = float(speed)
        self.tick = float(tick)
        self._mono0 = time.monotonic()
        self._unix0 = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due: dict[int, list[asyncio.Future]] = {}  # tick number -> sleepers woken by its timer
        self._calls: dict[int, list[tuple[float, Callable[[], None]]]] = {}  # tick number -> call_when calls
        self.sleeps = 0  # waits that suspended the caller (the engine skips its own yield after one)

    def now(self) -> float:
        return (time.monotonic() - self._mono0) * self.speed

    def unix(self) -> float:
        return self._unix0 + self.now()

    async def sleep_until(self, t: float) -> None:
        while True:
            remaining = (t - self.now()) / self.speed
            if remaining <= 0:
                return
            self.sleeps += 1
            if self.tick > 0:
                await self._wait_tick(remaining)
            else:
                await asyncio.sleep(remaining)

    async def sleep(self, dt: float) -> None:
        await self.sleep_until(self.now() + max(0.0, dt))

    def _wait_tick(self, remaining: float) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._due, self._calls = loop, {}, {}
        key = math.ceil((loop.time() + remaining) / self.tick)
        sleepers = self._due.get(key)
        if sleepers is None:
            sleepers = self._due[key] = []
            loop.call_at(key * self.tick, self._wake, key)
        fut = loop.create_future()
        sleepers.append(fut)
        return fut

    def _wake(self, key: int) -> None:
        for fut in self._due.pop(key, ()):
            if not fut.done():
                fut.set_result(None)

    def call_when(self, t: float, fn: Callable[[], None]) -> None:
        """Call fn() from the running event loop once now() >= t, on the timer shared by everything
        due in the same tick (no task, no future: one callback per sample of a rack in real time)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._due, self._calls = loop, {}, {}
        remaining = (t - self.now()) / self.speed
        if remaining <= 0:
            loop.call_soon(fn)
            return
        if self.tick <= 0:
            loop.call_at(loop.time() + remaining, self._call, t, fn)
            return
        key = math.ceil((loop.time() + remaining) / self.tick)
        calls = self._calls.get(key)
        if calls is None:
            calls = self._calls[key] = []
            loop.call_at(key * self.tick, self._run_calls, key)
        calls.append((t, fn))

    def _call(self, t: float, fn: Callable[[], None]) -> None:
        if self.now() < t:  # the loop's timer came a hair early on this clock's scale
            self.call_when(t, fn)
        else:
            fn()

    def _run_calls(self, key: int) -> None:
        for t, fn in self._calls.pop(key, ()):
            self._call(t, fn)
