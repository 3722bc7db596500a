"""Prometheus metrics of the HTTP edge. Other layers declare their own next to their code.

The database pool is read when Prometheus scrapes (a collector), not sampled on a
timer, so the figures are never stale and cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REQUESTS = Counter(
    "chat_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "chat_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

DB_REACHABLE = Gauge(
    "chat_db_reachable", "1 if the last readiness check (/readyz) reached the database, "
    "else 0; the process starts serving only once it has",
)
DB_REACHABLE.set(1)

# The labelled children by label values: ``labels()`` validates and locks on each
# call, and this runs for every request. Routes are canonical paths, so few keys.
_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and its latency."""
    key = (method, route, status)
    child = _children.get(key)
    if child is None:
        if len(_children) >= 10_000:  # unreachable with canonical routes; stay bounded
            _children.clear()
        child = _children[key] = (REQUESTS.labels(method, route, str(status)),
                                  REQUEST_SECONDS.labels(method, route))
    child[0].inc()
    child[1].observe(seconds)


class SizedPool(Protocol):
    """What the collector reads of a connection pool (``asyncpg.Pool`` has it)."""

    def get_size(self) -> int: ...

    def get_idle_size(self) -> int: ...

    def get_max_size(self) -> int: ...


class PoolCollector(Collector):
    """Connections of the pools of this process: open, in use, and the maximum.

    A process normally has one pool; with several (tests) the figures are summed.
    """

    def __init__(self) -> None:
        self._pools: list[SizedPool] = []

    def watch(self, pool: SizedPool) -> None:
        """Report ``pool`` from now on."""
        self._pools.append(pool)

    def unwatch(self, pool: SizedPool) -> None:
        """Stop reporting ``pool`` (before it closes)."""
        self._pools = [p for p in self._pools if p is not pool]

    def collect(self) -> Iterator[Metric]:
        """Read every watched pool now."""
        size = sum(p.get_size() for p in self._pools)
        idle = sum(p.get_idle_size() for p in self._pools)
        maximum = sum(p.get_max_size() for p in self._pools)
        yield GaugeMetricFamily(
            "chat_db_pool_connections", "Open connections in the database pool", value=size
        )
        yield GaugeMetricFamily(
            "chat_db_pool_connections_in_use", "Pool connections checked out by a request or "
            "job", value=size - idle,
        )
        yield GaugeMetricFamily(
            "chat_db_pool_max_connections", "Largest size the database pool may grow to",
            value=maximum,
        )


DB_POOL = PoolCollector()
REGISTRY.register(DB_POOL)
