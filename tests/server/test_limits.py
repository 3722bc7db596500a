"""Per-tenant and per-key limits on a real server: rate and burst, ``RateLimit-Policy``,
the connection cap, and the shared Redis bucket across two ``serve`` processes.

The server's own settings are generous (10 000/s); the overrides are set in the
database before a key is first used (the principal is cached with its limits).
Refills are slow (one token per 100 s or more) so no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.storage import apikeys, overrides, tenants
from tests.conftest import Tenant, make_tenant
from tests.support.procs import Cluster
from tests.support.streamkit import connect, new_session

SESSIONS = "/api/v1/sessions"
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)


async def set_tenant(pool: asyncpg.Pool, tenant: Tenant, **changes: Any) -> None:
    async with pool.acquire() as conn:
        await tenants.update_tenant(conn, tenant.name, **changes)


async def add_key(pool: asyncpg.Pool, tenant: Tenant, **limits: Any) -> Tenant:
    """Another key of ``tenant``, with its own limits."""
    async with pool.acquire() as conn:
        created = await apikeys.create_key(conn, tenant.name, name="own",
                                           limits=overrides.Limits(**limits))
    return dataclasses.replace(tenant, key=created.key, key_id=created.id)


async def statuses(client: Any, tenant: Tenant, n: int) -> tuple[list[int], set[str]]:
    """The statuses of ``n`` requests, and the ``RateLimit-Policy`` values they carried."""
    codes, policies = [], set()
    for _ in range(n):
        r = await client.get(SESSIONS, headers=tenant.headers)
        codes.append(r.status)
        policies.add(r.headers["RateLimit-Policy"])
        assert r.headers["RateLimit-Limit"] == r.headers["RateLimit-Policy"].split("=")[-1]
    return codes, policies


async def test_tenants_with_different_limits_are_limited_differently(
    client: Any, pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> None:
    await set_tenant(pool, tenant, rate_limit_per_s=0.01, rate_limit_burst=2)
    await set_tenant(pool, other_tenant, rate_limit_per_s=0.005, rate_limit_burst=4)
    plain = await make_tenant(pool, "c")
    assert await statuses(client, tenant, 3) == ([200, 200, 429], {"0.01;w=1;burst=2"})
    assert await statuses(client, other_tenant, 5) == ([200] * 4 + [429],
                                                       {"0.005;w=1;burst=4"})
    assert await statuses(client, plain, 3) == ([200] * 3, {"10000;w=1;burst=10000"})
    # the 429 carries the headers too, and a Retry-After from the tenant's rate
    r = await client.get(SESSIONS, headers=tenant.headers)
    assert r.status == 429 and int(r.headers["Retry-After"]) > 50


async def test_a_key_s_own_limits_win_over_its_tenant_s(
    client: Any, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    await set_tenant(pool, tenant, rate_limit_per_s=0.01, rate_limit_burst=2)
    roomy = await add_key(pool, tenant, rate_limit_burst=5)
    faster = await add_key(pool, tenant, rate_limit_per_s=0.02)
    # field by field: a key's burst with the tenant's rate, and the other way round
    assert await statuses(client, roomy, 6) == ([200] * 5 + [429], {"0.01;w=1;burst=5"})
    assert await statuses(client, faster, 3) == ([200, 200, 429], {"0.02;w=1;burst=2"})
    assert await statuses(client, tenant, 3) == ([200, 200, 429], {"0.01;w=1;burst=2"})


async def test_the_tenant_s_connection_cap_replaces_the_setting(
    aiohttp_client: Any, settings: Settings, pool: asyncpg.Pool, tenant: Tenant,
    other_tenant: Tenant
) -> None:
    client = await aiohttp_client(create_app(
        dataclasses.replace(settings, ws_max_connections_per_tenant=1)))
    await set_tenant(pool, tenant, max_stream_connections=3)
    sid = await new_session(client, tenant)
    opened = [await connect(client, tenant, sid) for _ in range(3)]  # over the setting
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(client, tenant, sid)
    assert refused.value.status == 429
    # an event stream counts against the same cap
    async with client.get(f"{SESSIONS}/{sid}/events", headers=tenant.headers) as sse:
        assert sse.status == 429
    # a tenant without a cap of its own has the setting's
    other_sid = await new_session(client, other_tenant)
    first = await connect(client, other_tenant, other_sid)
    with pytest.raises(aiohttp.WSServerHandshakeError) as other:
        await connect(client, other_tenant, other_sid)
    assert other.value.status == 429
    for ws in [*opened, first]:
        await ws.close()


async def test_a_cap_below_the_setting_answers_429_at_its_count(
    client: Any, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    await set_tenant(pool, tenant, max_stream_connections=2)
    sid = await new_session(client, tenant)
    opened = [await connect(client, tenant, sid) for _ in range(2)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(client, tenant, sid)
    assert refused.value.status == 429
    # a browser's ticket stands for the same key: the same cap
    r = await client.post(f"{SESSIONS}/{sid}/ws-tickets", headers=tenant.headers)
    ticket = (await r.json())["ticket"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as by_ticket:
        await client.ws_connect(f"{SESSIONS}/{sid}/ws?ticket={ticket}")
    assert by_ticket.value.status == 429
    await opened[0].close()
    for _ in range(200):  # the slot is freed when the server has seen the close
        try:
            opened[0] = await connect(client, tenant, sid)
            break
        except aiohttp.WSServerHandshakeError:
            await asyncio.sleep(0.02)
    else:
        pytest.fail("the closed connection's slot was never freed")
    for ws in opened:
        await ws.close()


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(database_url, tmp_path)
    yield c
    await c.close()


async def test_two_processes_share_the_overridden_bucket(
    cluster: Cluster, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    await set_tenant(pool, tenant, rate_limit_per_s=0.001, rate_limit_burst=4)
    own = await add_key(pool, tenant, rate_limit_burst=3)
    a, b = await cluster.start(2, env={"CHAT_RATE_LIMIT_PER_S": "10000",
                                       "CHAT_RATE_LIMIT_BURST": "10000"})
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        for who, burst in ((tenant, 4), (own, 3)):
            codes, policies = [], set()
            for n in range(burst + 2):
                server = (a, b)[n % 2]
                async with http.get(f"{server.base}{SESSIONS}", headers=who.headers) as r:
                    codes.append(r.status)
                    policies.add(r.headers["RateLimit-Policy"])
            # alone, each process would have allowed every one of its requests
            assert codes == [200] * burst + [429] * 2
            assert policies == {f"0.001;w=1;burst={burst}"}
