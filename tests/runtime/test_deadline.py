"""A deadline is shared by the steps of a shutdown: each takes what is left."""

from __future__ import annotations

import asyncio

from chat_storage.runtime.deadline import Deadline


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_remaining_shrinks_and_never_goes_below_zero() -> None:
    clock = Clock()
    deadline = Deadline(10.0, clock=clock)
    assert deadline.remaining_s == 10.0
    clock.now += 4.0
    assert deadline.remaining_s == 6.0 and not deadline.expired
    clock.now += 7.0
    assert deadline.remaining_s == 0.0 and deadline.expired


async def test_a_step_that_overruns_is_cancelled_and_reported() -> None:
    deadline = Deadline(0.05)
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    assert await deadline.run("stuck", stuck()) is False
    assert cancelled.is_set()
    # nothing is left for the next step: it gets no time at all
    assert await deadline.run("next", asyncio.sleep(0.01)) is False


async def test_a_step_in_time_reports_so() -> None:
    assert await Deadline(5.0).run("quick", asyncio.sleep(0)) is True
