"""Maintenance over a real server: retention archives, erasure of archives, temporary
chats, stale uploads, idempotency keys, one runner at a time."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from chat_storage.runtime import maintenance
from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.state import OBJECTS_KEY, POOL_KEY, SETTINGS_KEY
from chat_storage.storage import locks, retention
from tests.conftest import Tenant, make_tenant
from tests.server.test_attachments import create, ready
from tests.server.test_messages import add, history, new_session

LATER = dt.timedelta(days=31)


def archives(settings: Settings) -> list[Path]:
    root = settings.data_dir / "objects" / "archives"
    return sorted(root.rglob("*.jsonl.gz")) if root.exists() else []


def settings_of(client: Any) -> Settings:
    settings: Settings = client.app[SETTINGS_KEY]
    return settings


async def run(client: Any, settings: Settings, after: dt.timedelta = LATER) -> Any:
    app = client.app
    return await maintenance.run_once(app[POOL_KEY], app[OBJECTS_KEY], settings,
                                      now=dt.datetime.now(dt.UTC) + after)


async def test_retention_archives_then_erasure_removes_the_archives(
    client: Any, pool: asyncpg.Pool, settings: Settings,
) -> None:
    tenant = await make_tenant(pool)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE tenants SET retention_days = 30 WHERE id = $1", tenant.id)
    sid = await new_session(client, tenant, user_id="ada")
    other = await new_session(client, tenant, user_id="bob")
    for text in ("one", "two"):
        await add(client, tenant, sid, content=text)
    await add(client, tenant, other, content="bob's")
    linked = await ready(client, tenant, sid)
    await add(client, tenant, sid, content="with a file", attachment_ids=[linked])

    report = await run(client, settings)
    assert (report.archived_messages, report.archived_sessions) == (4, 2)
    assert report.archives == 2  # one per user
    r = await client.get(f"/api/v1/sessions/{sid}", headers=tenant.headers)
    assert r.status == 404
    files = archives(settings)
    ada = retention.user_prefix(tenant.id, "ada")
    [ada_archive] = [str(p.relative_to(settings.data_dir / "objects")) for p in files
                     if ada in str(p)]
    lines = await retention.read_archive(client.app[OBJECTS_KEY], ada_archive)
    assert [x["content"] for x in lines if x["kind"] == "message"] == [
        "one", "two", "with a file"]
    # the attachment's file went with its message
    assert not list((settings.data_dir / "objects" / str(tenant.id)).rglob(linked))

    r = await client.delete("/api/v1/users/ada/sessions", headers=tenant.headers)
    assert r.status == 204
    left = archives(settings)
    assert len(left) == 1 and ada not in str(left[0])  # bob's archive stays

    again = await run(client, settings)  # nothing more to archive
    assert (again.archived_messages, again.archived_sessions, again.archives) == (0, 0, 0)


async def test_temporary_chats_stale_uploads_and_old_keys_go(
    client: Any, tenant: Tenant, pool: asyncpg.Pool,
) -> None:
    sid = await new_session(client, tenant)
    r = await client.post("/api/v1/sessions", headers=tenant.headers,
                          json={"user_id": "u1", "ttl_s": 60})
    temporary = (await r.json())["id"]
    pending = (await create(client, tenant, sid))["attachment"]["id"]
    done = await ready(client, tenant, sid)
    r = await client.post("/api/v1/sessions", json={"user_id": "u1"},
                          headers={**tenant.headers, "Idempotency-Key": "old-key"})
    assert r.status == 201
    async with pool.acquire() as conn:
        await conn.execute("UPDATE sessions SET expires_at = now() - interval '1 s' "
                           "WHERE id = $1", uuid.UUID(temporary))
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '2 days' "
                           "WHERE tenant_id = $1", tenant.id)

    report = await run(client, settings_of(client), dt.timedelta(days=2))
    # (other tests' rows in this database may go in the same run: at least ours went)
    assert report.expired_sessions >= 1
    assert report.stale_attachments >= 1
    assert report.idempotency_keys >= 1
    for path, status in ((f"/api/v1/sessions/{temporary}", 404),
                         (f"/api/v1/sessions/{sid}/attachments/{pending}", 404),
                         (f"/api/v1/sessions/{sid}/attachments/{done}", 200),
                         (f"/api/v1/sessions/{sid}", 200)):
        r = await client.get(path, headers=tenant.headers)
        assert r.status == status, path
    assert (await history(client, tenant, sid))["data"] == []
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE tenant_id = $1",
                                   tenant.id) == 0


async def test_one_runner_at_a_time(client: Any, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", locks.MAINTENANCE_LOCK)
        try:
            assert await run(client, settings_of(client)) is None
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", locks.MAINTENANCE_LOCK)
    assert await run(client, settings_of(client)) is not None


async def test_the_server_runs_it_in_the_background(
    aiohttp_client: Any, settings: Settings, tenant: Tenant, pool: asyncpg.Pool,
) -> None:
    def done() -> float:
        return REGISTRY.get_sample_value("chat_maintenance_runs_total",
                                         {"outcome": "done"}) or 0.0

    def expired() -> float:
        return REGISTRY.get_sample_value("chat_maintenance_removed_total",
                                         {"kind": "expired_sessions"}) or 0.0

    runs, erased = done(), expired()
    client = await aiohttp_client(create_app(dataclasses.replace(
        settings, maintenance_interval_s=0.05)))
    r = await client.post("/api/v1/sessions", headers=tenant.headers,
                          json={"user_id": "u1", "ttl_s": 60})
    sid = uuid.UUID((await r.json())["id"])
    async with pool.acquire() as conn:
        await conn.execute("UPDATE sessions SET expires_at = now() WHERE id = $1", sid)
        for _ in range(200):  # bounded: the loop wakes every 0.04-0.06 s
            gone = not await conn.fetchval("SELECT count(*) FROM sessions WHERE id = $1", sid)
            # the run that erased it has also counted it, and itself
            if gone and expired() > erased and done() > runs:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the background run never erased the expired session")
