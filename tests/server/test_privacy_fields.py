"""PII redaction of message metadata (nested string values) and attachment names, through
a running server process and the real Postgres: REST and WebSocket creates, a stream's
end, a PATCH, an announced attachment; and a tenant without the flag keeps its values."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from chat_storage.storage import tenants
from tests.conftest import Tenant, make_tenant
from tests.server.test_privacy import PII
from tests.support.procs import Server

TIMEOUT = aiohttp.ClientTimeout(total=60)


def nested(value: str) -> dict[str, Any]:
    """Metadata with ``value`` at the top, in a list and three objects down."""
    return {"top": value, "n": 7, "ok": True, "list": [value, 1, None],
            "deep": {"a": {"b": {"c": f"see {value} here"}}}}


def redacted(placeholder: str) -> dict[str, Any]:
    return {"top": placeholder, "n": 7, "ok": True, "list": [placeholder, 1, None],
            "deep": {"a": {"b": {"c": f"see {placeholder} here"}}}}


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(database_url, tmp_path / "server.log")
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def redacting(pool: asyncpg.Pool) -> Tenant:
    tenant = await make_tenant(pool, "pii")
    async with pool.acquire() as conn:
        await tenants.update_tenant(conn, tenant.name, redact_pii=True,
                                    pii_patterns={"EMPLOYEE_ID": r"EMP-\d{6}"})
    return tenant


async def call(http: aiohttp.ClientSession, method: str, url: str, tenant: Tenant,
               status: int, **kwargs: Any) -> Any:
    async with http.request(method, url, headers=tenant.headers, **kwargs) as r:
        assert r.status == status, await r.text()
        return await r.json()


async def stored_metadata(pool: asyncpg.Pool, tenant: Tenant) -> str:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT metadata::text AS m FROM messages WHERE tenant_id = $1",
                                tenant.id)
    return "\n".join(r["m"] for r in rows)


async def ws_writes(http: aiohttp.ClientSession, tenant: Tenant, sid: str,
                    metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """A message.create and a stream whose end carries ``metadata``: their final messages."""
    out = []
    async with http.ws_connect(f"/api/v1/sessions/{sid}/ws", headers=tenant.headers) as ws:
        await ws.send_json({"type": "message.create", "ref": "c", "role": "user",
                            "content": "hi", "metadata": metadata})
        while (frame := await ws.receive_json(timeout=30))["type"] != "ack":
            assert frame["type"] != "error", frame
        out.append(frame["message"])
        await ws.send_json({"type": "stream.start", "ref": "s", "role": "assistant"})
        while (frame := await ws.receive_json(timeout=30))["type"] != "stream.started":
            assert frame["type"] != "error", frame
        await ws.send_json({"type": "stream.delta", "stream_id": frame["stream_id"],
                            "delta": "answer"})
        await ws.send_json({"type": "stream.end", "stream_id": frame["stream_id"],
                            "ref": "e", "metadata": metadata})
        while (frame := await ws.receive_json(timeout=30)).get("ref") != "e":
            assert frame["type"] != "error", frame
        assert frame["type"] == "stream.completed", frame
        out.append(frame["message"])
    return out


async def test_metadata_strings_and_attachment_names_are_redacted(
        server: Server, pool: asyncpg.Pool) -> None:
    tenant, plain = await redacting(pool), await make_tenant(pool, "nopii")
    async with aiohttp.ClientSession(server.base, timeout=TIMEOUT) as http:
        for value, placeholder in PII.items():  # each kind, in a session of its own
            for who in (tenant, plain):
                await write_everywhere(http, who, value,
                                       placeholder if who is tenant else value)
    # Postgres holds none of it for the redacting tenant, all of it for the other
    redacted_rows, plain_rows = await stored_metadata(pool, tenant), await stored_metadata(
        pool, plain)
    async with pool.acquire() as conn:
        names = {t: [r["name"] for r in await conn.fetch(
            "SELECT name FROM attachments WHERE tenant_id = $1", t)] for t in (tenant.id, plain.id)}
    for value, placeholder in PII.items():
        assert value not in redacted_rows and placeholder in redacted_rows
        assert plain_rows.count(value) == 5 * 3  # five writes, three strings each
        assert f"scan of {placeholder} - copy.pdf" in names[tenant.id]
        assert f"scan of {value} - copy.pdf" in names[plain.id]
        assert not any(value in n for n in names[tenant.id])
        assert value not in server.log()


async def write_everywhere(http: aiohttp.ClientSession, who: Tenant, value: str,
                           shown: str) -> None:
    """``value`` in the metadata of every kind of write and in an attachment's name; the
    answers show ``shown`` in its place."""
    want = redacted(shown)
    sid = (await call(http, "POST", "/api/v1/sessions", who, 201, json={"user_id": "u"}))["id"]
    made = await call(http, "POST", f"/api/v1/sessions/{sid}/messages", who, 201,
                      json={"role": "user", "content": "x", "metadata": nested(value)})
    assert made["metadata"] == want
    batch = await call(http, "POST", f"/api/v1/sessions/{sid}/messages/batch", who, 201,
                       json={"messages": [{"role": "user", "content": "x",
                                           "metadata": nested(value)}]})
    assert batch["data"][0]["metadata"] == want
    for message in await ws_writes(http, who, sid, nested(value)):
        assert message["metadata"] == want
    mid = (await call(http, "POST", f"/api/v1/sessions/{sid}/messages", who, 201,
                      json={"role": "user", "content": "x"}))["id"]
    patched = await call(http, "PATCH", f"/api/v1/sessions/{sid}/messages/{mid}", who, 200,
                         json={"metadata": nested(value)})
    assert patched["metadata"] == want
    attached = await call(http, "POST", f"/api/v1/sessions/{sid}/attachments", who, 201,
                          json={"name": f"scan of {value} - copy.pdf", "mime": "application/pdf",
                                "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()})
    assert attached["attachment"]["name"] == f"scan of {shown} - copy.pdf"


async def test_metadata_deeper_than_the_bound_is_not_stored_unchecked(
        server: Server, pool: asyncpg.Pool) -> None:
    tenant = await redacting(pool)
    deep: Any = "jane.roe@example.org"
    for _ in range(40):
        deep = {"d": deep}
    async with aiohttp.ClientSession(server.base, timeout=TIMEOUT) as http:
        sid = (await call(http, "POST", "/api/v1/sessions", tenant, 201,
                          json={"user_id": "u"}))["id"]
        made = await call(http, "POST", f"/api/v1/sessions/{sid}/messages", tenant, 201,
                          json={"role": "user", "content": "x", "metadata": deep})
    assert "jane.roe" not in str(made["metadata"]) and "<TOO_DEEP>" in str(made["metadata"])
    async with pool.acquire() as conn:
        stored = await conn.fetchval("SELECT metadata::text FROM messages WHERE id = $1",
                                     uuid.UUID(made["id"]))
    assert "jane.roe" not in stored
