"""Prometheus metrics of the write path."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATCH_SIZE = Histogram(
    "chat_write_batch_size", "Writes committed per transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
COMMIT_SECONDS = Histogram(
    "chat_write_commit_seconds", "Latency of one group-commit transaction",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
MAILBOX_DEPTH = Gauge("chat_mailbox_depth", "Writes queued in all session mailboxes")
ACTIVE_ACTORS = Gauge("chat_active_actors", "Session actors alive in this process")
REJECTED = Counter("chat_writes_rejected_total", "Writes not accepted, by reason", ["reason"])
