"""Prometheus metrics of the HTTP edge. Other layers declare their own next to their code."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "chat_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "chat_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
