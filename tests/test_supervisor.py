"""The supervisor keeps its tasks, counts and logs a failure, and cancels what is left."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from prometheus_client import REGISTRY

from chat_storage.supervisor import Supervisor


def failures(kind: str) -> float:
    value = REGISTRY.get_sample_value("chat_background_task_failures_total", {"kind": kind})
    return value or 0.0


async def test_a_failed_task_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    tasks = Supervisor()
    before = failures("janitor")

    async def boom() -> None:
        raise ValueError("broken")

    task = tasks.spawn(boom(), name="janitor:7")
    with caplog.at_level(logging.ERROR, logger="chat_storage.supervisor"):
        await asyncio.wait([task])
        await asyncio.sleep(0)  # done callbacks run on the next loop pass
    assert failures("janitor") == before + 1
    assert [r.task for r in caplog.records] == ["janitor:7"]  # type: ignore[attr-defined]
    assert len(tasks) == 0


async def test_tasks_are_held_until_they_end() -> None:
    tasks = Supervisor()
    release = asyncio.Event()
    task = tasks.spawn(release.wait(), name="waiter")
    assert len(tasks) == 1
    release.set()
    assert await task is True
    await asyncio.sleep(0)
    assert len(tasks) == 0


async def test_close_cancels_what_is_left_and_refuses_new_tasks() -> None:
    tasks = Supervisor()
    forever = tasks.spawn(asyncio.Event().wait(), name="forever")
    assert await tasks.close(1.0) == 1
    assert forever.cancelled()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        tasks.spawn(coro, name="late")


async def test_stop_waits_for_the_task_to_end() -> None:
    tasks = Supervisor()
    ended = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)  # cleanup that takes a moment
            ended.set()

    task = tasks.spawn(slow_to_stop(), name="slow")
    await asyncio.sleep(0)
    assert await tasks.stop(task) is True
    assert ended.is_set() and task.cancelled()


async def test_stop_gives_up_at_its_timeout_on_a_task_that_will_not_end() -> None:
    tasks = Supervisor()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # the bug being guarded
                await release.wait()

    task = tasks.spawn(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    assert await tasks.stop(task, timeout_s=0.05) is False
    release.set()
    await task
