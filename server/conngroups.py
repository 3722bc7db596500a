"""Open streaming connections grouped by what vouches for them, and their deadlines:
the indexes :class:`~chat_storage.server.streaming.Connections` ends streams by when an
API key is revoked, a signing key retired, an issuer's key withdrawn, or a token
expires (:mod:`.revocation`, :mod:`.credential_watch`).

No timer per connection: a deadline is one entry of a heap, looked at by the periodic
sweep; entries of connections that ended are dropped then, or when they outnumber the
open ones.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Groups(Generic[K]):
    """Connection tokens by a key each belongs to (at most one)."""

    def __init__(self) -> None:
        self._members: dict[K, set[int]] = {}
        self._of: dict[int, K] = {}

    def add(self, key: K, token: int) -> None:
        self._members.setdefault(key, set()).add(token)
        self._of[token] = key

    def discard(self, token: int) -> None:
        key = self._of.pop(token, None)
        if key is None:
            return
        members = self._members[key]
        members.discard(token)
        if not members:
            del self._members[key]

    def keys(self) -> list[K]:
        """The keys that have connections."""
        return list(self._members)

    def members(self, keys: Iterable[K]) -> list[int]:
        """The connections of ``keys``."""
        return [t for k in keys for t in self._members.get(k, ())]


class Deadlines:
    """When connections must end (a heap of ``(at, token)``)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, at: float, token: int) -> None:
        heapq.heappush(self._heap, (at, token))

    def due(self, now: float) -> list[int]:
        """The tokens whose deadline is ``now`` or before (removed from the heap)."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[1])
        return due

    def keep_only(self, open_tokens: set[int]) -> None:
        """Drop the entries of connections that ended."""
        self._heap = [e for e in self._heap if e[1] in open_tokens]
        heapq.heapify(self._heap)
