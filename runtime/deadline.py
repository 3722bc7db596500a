"""One deadline for a whole shutdown: every step takes what is left of it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Deadline:
    """A point in time ``seconds`` from now, on a monotonic clock."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._at = clock() + seconds

    @property
    def remaining_s(self) -> float:
        """Seconds left, never below 0."""
        return max(0.0, self._at - self._clock())

    @property
    def expired(self) -> bool:
        return self.remaining_s <= 0.0

    async def run(self, step: str, aw: Awaitable[T]) -> bool:
        """Await ``aw`` for at most what is left; whether it finished in time.

        A step that overruns is cancelled and logged with its name; the caller then
        takes its forced path (terminate instead of close).
        """
        try:
            await asyncio.wait_for(aw, timeout=self.remaining_s)
        except TimeoutError:
            log.warning("shutdown step did not finish before the deadline",
                        extra={"step": step, "timeout_s": self.seconds})
            return False
        return True
