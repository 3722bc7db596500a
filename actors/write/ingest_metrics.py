"""The async-ingestion consumer's metrics (:mod:`actors.write.ingest`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from chat_storage.storage.ingest import Stats

ENTRIES = Counter("chat_ingest_entries_total", "Ingest entries handled by this process's "
                  "consumer, by outcome (stored, duplicate, dead, retry)", ["outcome"])
PERSISTED = Counter("chat_ingest_messages_persisted_total",
                    "Messages stored from the ingest stream by this process")
DEAD_LETTERS = Counter("chat_ingest_dead_letters_total",
                       "Ingest entries moved to the dead-letter stream, by reason", ["reason"])
ROUND_ERRORS = Counter("chat_ingest_round_errors_total",
                       "Consumer rounds that failed unexpectedly (entries left pending)")
RECLAIMED = Counter("chat_ingest_reclaimed_total",
                    "Pending ingest entries taken over from an idle consumer (XAUTOCLAIM)")
# Figures of the shared stream (the same from every process: aggregate with max()).
LAG = Gauge("chat_ingest_lag_entries", "Ingest entries not yet delivered to any consumer")
PENDING = Gauge("chat_ingest_pending_entries", "Ingest entries delivered, not yet stored")
BACKLOG = Gauge("chat_ingest_backlog_entries", "Ingest entries not yet stored (lag + pending)")
DEAD = Gauge("chat_ingest_dead_entries", "Entries in the ingest dead-letter stream")


def show(stats: Stats) -> None:
    """Set the stream's gauges from ``stats``."""
    LAG.set(stats.lag)
    PENDING.set(stats.pending)
    BACKLOG.set(stats.backlog)
    DEAD.set(stats.dead)
