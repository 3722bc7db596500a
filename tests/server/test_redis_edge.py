"""The app with and without Redis: broker choice, shared rate limit, readiness.

Two apps on the same Redis stand in for two replicas: each is a real server on its own
socket, with its own pool, limiter and broker, sharing only Postgres and Redis.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

from prometheus_client import REGISTRY

from chat_storage.runtime.settings import Settings
from chat_storage.server import ratelimit
from chat_storage.server.app import create_app
from chat_storage.server.state import BROKER_KEY
from chat_storage.storage.broker import MemoryBroker, RedisBroker
from chat_storage.storage.ratelimit import MemoryLimiter, SharedLimiter
from tests.conftest import REDIS_URL, Tenant


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there once the socket closes


async def test_without_redis_the_broker_is_in_memory(client: Any) -> None:
    app = client.server.app
    assert isinstance(app[BROKER_KEY], MemoryBroker)
    assert isinstance(app[ratelimit.LIMITER_KEY], MemoryLimiter)
    r = await client.get("/readyz")
    assert r.status == 200
    assert "redis" not in (await r.json())["checks"]


async def test_with_redis_broker_and_limiter_are_shared(
    aiohttp_client: Any, settings: Settings, prefix: str
) -> None:
    s = dataclasses.replace(settings, redis_url=REDIS_URL, redis_prefix=prefix)
    client = await aiohttp_client(create_app(s))
    app = client.server.app
    assert isinstance(app[BROKER_KEY], RedisBroker)
    assert app[BROKER_KEY].keys.prefix == prefix
    assert isinstance(app[ratelimit.LIMITER_KEY], SharedLimiter)
    r = await client.get("/readyz")
    assert r.status == 200
    assert (await r.json())["checks"]["redis"] == "ok"


async def test_two_replicas_share_one_rate_limit(
    aiohttp_client: Any, settings: Settings, prefix: str, tenant: Tenant
) -> None:
    s = dataclasses.replace(settings, redis_url=REDIS_URL, redis_prefix=prefix,
                            rate_limit_per_s=0.001, rate_limit_burst=6)
    replicas = [await aiohttp_client(create_app(s)), await aiohttp_client(create_app(s))]
    statuses, remaining = [], []
    for n in range(10):
        r = await replicas[n % 2].get("/api/v1/sessions", headers=tenant.headers)
        statuses.append(r.status)
        remaining.append(r.headers["RateLimit-Remaining"])
        assert r.headers["RateLimit-Limit"] == "6"
    # alone, each replica would have allowed 6 of its 5 requests
    assert statuses == [200] * 6 + [429] * 4
    assert remaining[:6] == ["5", "4", "3", "2", "1", "0"]
    r = await replicas[0].get("/api/v1/sessions", headers=tenant.headers)
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1


async def test_redis_down_degrades_but_serves(
    aiohttp_client: Any, settings: Settings, tenant: Tenant
) -> None:
    s = dataclasses.replace(settings, redis_url=closed_port_url(), redis_prefix="chat-test",
                            rate_limit_burst=3, rate_limit_per_s=0.001)
    client = await aiohttp_client(create_app(s))
    r = await client.get("/readyz")
    assert r.status == 200  # a Redis outage must not take replicas out of the balancer
    body = await r.json()
    assert body["checks"]["redis"] == "degraded"
    assert body["checks"]["database"] == "ok"
    before = REGISTRY.get_sample_value("chat_ratelimit_fallback_total") or 0.0
    statuses = []
    for _ in range(4):
        r = await client.post("/api/v1/sessions", json={"user_id": "u1"},
                              headers=tenant.headers)
        statuses.append(r.status)
    # the in-memory bucket of this process takes over: still limited, never failing
    assert statuses == [201, 201, 201, 429]
    after = REGISTRY.get_sample_value("chat_ratelimit_fallback_total") or 0.0
    assert after - before == 4
