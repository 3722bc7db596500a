"""Failed authentications are throttled per client address (server/auththrottle.py),
over a real socket: refused credentials use up the address's bucket, then its
uncached credentials get 429 without being looked up, while a cached key still works
and a request with no credential is never counted."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import asyncpg
import pytest

from chat_storage.runtime.settings import Settings
from tests.conftest import Tenant, make_tenant

SESSIONS = "/api/v1/sessions"
BAD_KEY = "cs_0123456789abcdef_not-a-real-secret"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, auth_failure_burst=3, auth_failures_per_s=0.5)


async def test_refused_credentials_are_throttled_per_address(
    client: Any, tenant: Tenant, pool: asyncpg.Pool,
) -> None:
    assert (await client.get(SESSIONS, headers=tenant.headers)).status == 200  # cached now
    for _ in range(10):  # no credential at all: 401, not a guess, not counted
        assert (await client.get(SESSIONS)).status == 401
    for _ in range(3):
        assert (await client.get(SESSIONS, headers={"X-Api-Key": BAD_KEY})).status == 403
    r = await client.get(SESSIONS, headers={"X-Api-Key": BAD_KEY})
    assert r.status == 429
    body = await r.json()
    assert body["code"] == "rate_limited"
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= 2
    r = await client.get(SESSIONS, headers={"Authorization": "Bearer not.a.token"})
    assert r.status == 429
    # a key looked up before still works; a key never seen is not looked up now
    assert (await client.get(SESSIONS, headers=tenant.headers)).status == 200
    fresh = await make_tenant(pool)
    assert (await client.get(SESSIONS, headers=fresh.headers)).status == 429
    await asyncio.sleep(retry_after)  # the bucket refills with time, nothing to await
    assert (await client.get(SESSIONS, headers=fresh.headers)).status == 200
    assert (await client.get(SESSIONS, headers={"X-Api-Key": BAD_KEY})).status == 403
