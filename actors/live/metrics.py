"""Prometheus metrics of the streaming path: connections, streams, fan-out, broker."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTIONS = Gauge("chat_stream_connections", "Open streaming connections", ["kind"])
CUT = Counter("chat_stream_connections_cut_total",
              "Connections closed because they could not keep up", ["kind"])
STREAMS_OPEN = Gauge("chat_streams_open", "Streamed answers held by this process")
STREAMS_ENDED = Counter("chat_streams_ended_total", "Streamed answers ended, by status",
                        ["status"])
DELTAS = Counter("chat_stream_deltas_total", "Deltas accepted from producers")
CHECKPOINT_ERRORS = Counter("chat_stream_checkpoint_errors_total",
                            "Checkpoints of streamed content that failed (retried)")
FEED_GAPS = Counter("chat_feed_gaps_total",
                    "Holes found in a session's event order, by what was missing", ["what"])
BROKER_ERRORS = Counter("chat_broker_errors_total",
                        "Events not published to the broker, by reason", ["reason"])
SWEPT = Counter("chat_streams_swept_total", "Streams interrupted because their owner died")
BROKER_RECONCILES = Counter(
    "chat_feed_reconciles_total",
    "Reconciles with Postgres after broker events were lost: markers published, feeds "
    "reconciled, reconciles that failed (their subscribers were cut to resume)", ["what"])
UNREADABLE = Counter("chat_broker_events_unreadable_total",
                     "Sealed live events from the broker that did not open here (their key "
                     "is gone or could not be read, or they were moved or altered)")
