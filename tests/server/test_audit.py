"""Access audit through a running server: who created, renamed, exported and erased what,
who minted tokens, failed authentications (rate-limited), seeded keys audited once."""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
from typing import Any

import asyncpg
import pytest

from chat_storage.runtime.database import seed_keys
from chat_storage.server.auth_audit import FailedAuthAudit
from chat_storage.server.cli_audit import since
from chat_storage.storage import apikeys
from chat_storage.storage.audit_log import audit_records
from tests.conftest import Tenant


async def _records(pool: asyncpg.Pool, tenant: Tenant) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return await audit_records(conn, tenant.id)


def _rid() -> str:
    return f"audit-{secrets.token_hex(6)}"


async def test_session_life_and_admin_key_use_are_audited(
        client: Any, pool: asyncpg.Pool, tenant: Tenant) -> None:
    actor = f"key:{tenant.key_id}"
    rid = _rid()
    r = await client.post("/api/v1/sessions", json={"user_id": "ann", "title": "my secret"},
                          headers={**tenant.headers, "X-Request-ID": rid})
    assert r.status == 201
    sid = (await r.json())["id"]
    await client.patch(f"/api/v1/sessions/{sid}", json={"favorite": True},
                       headers=tenant.headers)  # not a rename: not audited
    r = await client.patch(f"/api/v1/sessions/{sid}", json={"title": "renamed secret"},
                           headers=tenant.headers)
    assert r.status == 200
    r = await client.get(f"/api/v1/sessions/{sid}/export?format=jsonl", headers=tenant.headers)
    assert r.status == 200
    await r.read()
    r = await client.get("/api/v1/users/ann/export", headers=tenant.headers)
    assert r.status == 200
    await r.read()
    r = await client.post("/api/v1/tokens", json={"user_id": "ann", "ttl_s": 600},
                          headers=tenant.headers)
    assert r.status == 201
    r = await client.delete("/api/v1/users/ann/sessions", headers=tenant.headers)
    assert r.status in (202, 204)

    records = [r for r in await _records(pool, tenant) if r["action"] != "key.create"]
    assert [(r["action"], r["actor"], r["target"]) for r in records] == [
        ("tenant.create", "cli", tenant.name),
        ("session.create", actor, sid),
        ("session.rename", actor, sid),
        ("session.export", actor, sid),
        ("user.export", actor, "user:ann"),
        ("token.mint", actor, "user:ann"),
        ("user.erase", actor, "user:ann"),
    ]
    assert records[1]["request_id"] == rid and records[1]["details"] == {"user_id": "ann"}
    assert records[3]["details"] == {"format": "jsonl", "complete": True}
    assert records[5]["details"] == {"scopes": ["read", "write", "stream"], "ttl_s": 600,
                                     "sessions": None}
    assert "secret" not in repr(records)  # titles (content) never go into the log


async def test_a_session_that_is_not_there_is_not_audited_as_exported(
        client: Any, pool: asyncpg.Pool, tenant: Tenant) -> None:
    r = await client.get("/api/v1/sessions/0190d5c4-0000-7000-8000-000000000000/export",
                         headers=tenant.headers)
    assert r.status == 404
    assert not [r for r in await _records(pool, tenant) if r["action"] == "session.export"]


async def test_failed_authentications_are_audited_once_a_minute_per_source(
        client: Any, pool: asyncpg.Pool, tenant: Tenant) -> None:
    async with pool.acquire() as conn:
        await apikeys.revoke_key(conn, tenant.key_id)
    for _ in range(5):
        r = await client.get("/api/v1/sessions", headers=tenant.headers)
        assert r.status == 403
    rid, forged = _rid(), f"forged.{secrets.token_hex(8)}.token"
    for _ in range(3):  # another reason from the same address: its own record
        r = await client.get("/api/v1/sessions", headers={
            "Authorization": f"Bearer {forged}", "X-Request-ID": rid})
        assert r.status == 401
    failed = [r for r in await _records(pool, tenant) if r["action"] == "auth.failed"]
    assert len(failed) == 1
    assert failed[0]["target"] == f"key:{tenant.key_id}"
    assert failed[0]["details"]["reason"] == "invalid_key"
    assert failed[0]["details"]["address"] == "127.0.0.1"
    async with pool.acquire() as conn:  # what `chat-storage audit --unattributed` reads
        rows = [r for r in await audit_records(conn, None) if r["request_id"] == rid]
    assert len(rows) == 1 and rows[0]["action"] == "auth.failed"  # no tenant to name
    assert rows[0]["details"]["reason"] == "invalid_token"
    assert forged not in repr(rows) and tenant.key not in repr(failed)


def test_audit_since_takes_a_date_a_time_or_an_age() -> None:
    now = dt.datetime.now(dt.UTC)
    assert since("2026-12-01") == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert since("2026-12-01T10:00:00+02:00") == dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC)
    assert abs((now - since("7d")) - dt.timedelta(days=7)) < dt.timedelta(seconds=5)
    assert abs((now - since("30m")) - dt.timedelta(minutes=30)) < dt.timedelta(seconds=5)
    with pytest.raises(argparse.ArgumentTypeError, match="an age"):
        since("last week")


def test_the_failed_auth_limit_counts_sources_and_caps_the_window() -> None:
    limit = FailedAuthAudit(window_s=60.0, max_per_window=2)
    assert limit.admit("10.0.0.1", "invalid_key", 0.0) == 0
    assert limit.admit("10.0.0.1", "invalid_key", 1.0) is None  # same source, same window
    assert limit.admit("10.0.0.1", "invalid_token", 2.0) == 0  # another reason
    assert limit.admit("10.0.0.2", "invalid_key", 3.0) is None  # the window's cap
    assert limit.admit("10.0.0.1", "invalid_key", 61.0) == 0  # a new window


async def test_seeded_keys_are_audited_once_not_on_every_start(
        pool: asyncpg.Pool) -> None:
    name = f"seeded-{secrets.token_hex(4)}"
    key = f"seed-{secrets.token_hex(12)}"
    for _ in range(3):  # three starts
        await seed_keys(pool, ((name, key),), 90)
    async with pool.acquire() as conn:
        tenant_id = await conn.fetchval(
            "SELECT id FROM tenants WHERE name = $1 AND retention_days = 90", name)
        assert tenant_id is not None
        actions = [r["action"] for r in await audit_records(conn, tenant_id)]
    assert actions == ["tenant.create", "key.create"]
