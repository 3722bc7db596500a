"""What the write path asks of the parts around it, as small protocols.

:class:`CommitListener` is the write path's only view of live streaming: the
composition root hands the registry one (``actors.live`` implements it without
importing this module). :class:`BatchSink` is where mailboxes send their batches:
:class:`~chat_storage.actors.write.shared.SharedCommitter` in the service, another
committer in a benchmark (``loadtest/direct.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from chat_storage.storage.records import SessionKey
from chat_storage.storage.writes import SessionBatch, Stored

# Told the outcome of one session batch: each group's result, or the error of all.
Done = Callable[[list[Stored | Exception] | BaseException], None]


class CommitListener(Protocol):
    """Told of every commit; asked whether a session must keep its mailbox."""

    def on_commit(self, key: SessionKey, stored: Stored) -> None:
        """The messages one commit stored in the session, in seq order; must not block."""
        ...

    def in_use(self, key: SessionKey) -> bool:
        """Whether the session is busy elsewhere (subscribers, streams): keep its mailbox."""
        ...


class NoListener:
    """A :class:`CommitListener` for a write path with nobody listening (tests, tools)."""

    def on_commit(self, key: SessionKey, stored: Stored) -> None:
        """Nobody to tell."""

    def in_use(self, key: SessionKey) -> bool:
        """Never in use elsewhere."""
        return False


class BatchSink(Protocol):
    """Commits session batches and tells each sender its outcome."""

    def start(self) -> None:
        """Start any background work."""
        ...

    def submit(self, batch: SessionBatch, done: Done) -> None:
        """Queue ``batch``; ``done`` is called with its outcome after its transaction."""
        ...

    async def close(self) -> None:
        """Commit what is queued, then stop. Called after the mailboxes stopped."""
        ...

    def terminate(self) -> None:
        """Stop now: queued batches are answered not stored, those under way unknown."""
        ...
