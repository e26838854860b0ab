"""WallClock wake-ups: never before the time asked for; with a tick, sleepers due in the same tick
share one timer."""

from __future__ import annotations

import asyncio

import pytest

from cyclerctl.clock import WallClock


@pytest.mark.parametrize("tick", [0.0, 0.005])
def test_sleepers_never_wake_early(tick):
    clock = WallClock(tick=tick)

    async def sleeper(t):
        await clock.sleep_until(t)
        return clock.now() - t

    async def go():
        t0 = clock.now()
        return await asyncio.gather(*(sleeper(t0 + 0.01 + 0.0007 * k) for k in range(40)))

    late = asyncio.run(go())
    assert min(late) >= 0.0


def test_sleepers_in_one_tick_share_a_timer():
    clock = WallClock(tick=0.05)

    async def go():
        loop = asyncio.get_running_loop()
        t = (loop.time() // 0.05 + 3) * 0.05 - clock._mono0 + 0.001  # inside one tick, 0.1-0.15 s away
        tasks = [asyncio.create_task(clock.sleep_until(t + 0.0001 * k)) for k in range(30)]
        await asyncio.sleep(0)
        keys = list(clock._due)
        await asyncio.gather(*tasks)
        return keys, clock.now() - t

    keys, late = asyncio.run(go())
    assert len(keys) == 1 and late >= 0.0


def test_a_cancelled_sleeper_does_not_stop_the_others():
    clock = WallClock(tick=0.01)

    async def go():
        t = clock.now() + 0.03
        a = asyncio.create_task(clock.sleep_until(t))
        b = asyncio.create_task(clock.sleep_until(t))
        await asyncio.sleep(0)
        a.cancel()
        await b
        return a.cancelled(), clock.now() >= t

    assert asyncio.run(go()) == (True, True)


def test_tick_must_not_be_negative():
    with pytest.raises(ValueError, match="tick"):
        WallClock(tick=-1.0)
