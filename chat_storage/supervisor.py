"""The one owner of background tasks: it keeps them, logs and counts a task's death, and
is the only place tasks are cancelled.

Every layer spawns through a :class:`Supervisor` it was given (the composition root
makes one per process), never with a bare ``asyncio.create_task``: a task nobody holds
can be garbage-collected mid-flight, and one whose exception nobody reads dies in
silence (as the registry's janitor once did).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from prometheus_client import Counter

log = logging.getLogger(__name__)
T = TypeVar("T")

FAILURES = Counter("chat_background_task_failures_total",
                   "Background tasks that ended with an exception, by kind", ["kind"])


def kind_of(name: str) -> str:
    """The metric label of a task name: the part before ``:`` (``feed-start:<id>``)."""
    return name.split(":", 1)[0]


class Supervisor:
    """Holds every task it spawned until the task ends."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str,
              awaited: bool = False) -> asyncio.Task[T]:
        """Run ``coro`` as a task named ``name`` (``kind:detail``), owned here.

        ``awaited``: a caller awaits the task and gets its outcome (a shielded write):
        its failure is that caller's to handle, so it is not logged here again.
        """
        if self._closed:
            coro.close()
            raise RuntimeError(f"supervisor closed; cannot start {name}")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._forget if awaited else self._ended)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # the awaiter has it; no "exception never retrieved" warning

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            FAILURES.labels(kind_of(task.get_name())).inc()
            log.error("background task failed", exc_info=exc,
                      extra={"task": task.get_name()})

    def cancel(self, task: asyncio.Task[Any]) -> None:
        """Ask ``task`` to stop, without waiting (for code that cannot wait)."""
        task.cancel()

    async def stop(self, task: asyncio.Task[Any], timeout_s: float | None = None) -> bool:
        """Cancel ``task`` and wait until it has ended, at most ``timeout_s``; whether it did.

        Its failure, if any, is logged and counted here, never raised to the caller.
        """
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=timeout_s)
        return bool(done)

    async def close(self, timeout_s: float) -> int:
        """Cancel every task still running and wait up to ``timeout_s``; how many were left.

        Owners stop their tasks gracefully first (a flush, a final commit); this ends
        what remains, so nothing outlives the process's shutdown.
        """
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            if pending:
                log.warning("tasks still running after cancel",
                            extra={"tasks": sorted(t.get_name() for t in pending)})
        return len(tasks)
