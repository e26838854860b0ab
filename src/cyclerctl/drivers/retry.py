"""Bounded retries of transient instrument errors, with exponential backoff on the channel's clock."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..clock import Clock
from ..errors import InstrumentError

log = logging.getLogger(__name__)
T = TypeVar("T")


async def retrying(attempt: Callable[[], Awaitable[T]], clock: Clock, *, retries: int = 3,
                   backoff: float = 0.2, recover: Callable[[], Awaitable[None]] | None = None) -> T:
    """Run `attempt`; on a transient InstrumentError wait backoff, 2*backoff, ... (clock seconds),
    call `recover` (reconnect, resync) and try again, at most `retries` more times. The final
    failure is raised as a non-transient InstrumentError naming the attempts made."""
    delay = backoff
    for k in range(retries + 1):
        try:
            return await attempt()
        except InstrumentError as exc:
            _on_failure(exc, k, retries, delay)
            await clock.sleep(delay)
            delay *= 2
            if recover is not None:
                try:
                    await recover()
                except InstrumentError as again:
                    log.warning("recovery failed: %s", again)
    raise AssertionError("unreachable")


def _on_failure(exc: InstrumentError, k: int, retries: int, delay: float) -> None:
    """After failed attempt k: raise what is not transient or is the last attempt, else log the retry."""
    if not exc.transient:
        raise exc
    if k == retries:
        raise InstrumentError(f"{exc.message} (gave up after {retries + 1} attempts)",
                              exc.resource, exc.last_command) from exc
    log.warning("%s; retry %d of %d in %.3g s", exc, k + 1, retries, delay)


def retrying_blocking(attempt: Callable[[], T], sleep: Callable[[float], None], *, retries: int = 3,
                      backoff: float = 0.2, recover: Callable[[], None] | None = None) -> T:
    """`retrying` for a worker thread: `attempt` and `recover` are plain calls, `sleep(seconds)` waits
    on the channel's clock (and may raise to stop)."""
    delay = backoff
    for k in range(retries + 1):
        try:
            return attempt()
        except InstrumentError as exc:
            _on_failure(exc, k, retries, delay)
            sleep(delay)
            delay *= 2
            if recover is not None:
                try:
                    recover()
                except InstrumentError as again:
                    log.warning("recovery failed: %s", again)
    raise AssertionError("unreachable")
