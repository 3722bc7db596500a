"""A small cache whose entries expire: credentials looked up once, not on every request."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Values by key, each kept for ``ttl_s``; at most ``max_entries`` (then emptied:
    cheap and safe, entries are only a cache)."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}

    def lookup(self, key: K) -> tuple[bool, V | None]:
        """``(True, value)`` for a live entry, else ``(False, None)``."""
        hit = self._entries.get(key)
        if hit is None:
            return False, None
        if hit[0] < time.monotonic():
            del self._entries[key]
            return False, None
        return True, hit[1]

    def get(self, key: K) -> V | None:
        """The live value of ``key``, or ``None``."""
        return self.lookup(key)[1]

    def put(self, key: K, value: V) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl_s, value)

    def clear(self) -> None:
        self._entries.clear()
