"""Prometheus metrics of the write path.

The gauges are read when scraped, from every live registry of the process (usually
one), so the write path pays nothing per write for them.
"""

from __future__ import annotations

import weakref
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram

BATCH_SIZE = Histogram(
    "chat_write_batch_size", "Writes (requests) committed per transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
COMMIT_SECONDS = Histogram(
    "chat_write_commit_seconds", "Latency of one group-commit transaction",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
MAILBOX_DEPTH = Gauge("chat_mailbox_depth", "Writes queued in all session mailboxes")
ACTIVE_ACTORS = Gauge("chat_active_actors", "Session actors alive in this process")
IN_FLIGHT = Gauge("chat_writes_in_flight", "Writes accepted and not yet answered")
REJECTED = Counter("chat_writes_rejected_total", "Writes not accepted, by reason", ["reason"])
JANITOR_FAILURES = Counter("chat_registry_janitor_failures_total",
                           "Rounds of the registry's janitor (write deadlines, idle eviction) "
                           "that failed; the janitor goes on")


class Watched(Protocol):
    """What the gauges read from a registry."""

    @property
    def queued(self) -> int: ...

    @property
    def pending(self) -> int: ...

    def __len__(self) -> int: ...


_watched: weakref.WeakSet[Watched] = weakref.WeakSet()


def watch(registry: Watched) -> None:
    """Report ``registry`` in the gauges for as long as it lives."""
    _watched.add(registry)


MAILBOX_DEPTH.set_function(lambda: sum(r.queued for r in list(_watched)))
ACTIVE_ACTORS.set_function(lambda: sum(len(r) for r in list(_watched)))
IN_FLIGHT.set_function(lambda: sum(r.pending for r in list(_watched)))
