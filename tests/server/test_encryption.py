"""An encrypted tenant through a running server and the CLI, against the real Postgres:
what is stored, what reads return, search, rotation of the KEK, and the logs."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR
from chat_storage.storage import db
from tests.conftest import ADMIN_URL, Tenant, make_tenant
from tests.support import scratch
from tests.support.encryption import switched_off_after
from tests.support.pgdump import data_dump
from tests.support.procs import ROOT, Server, clean_env, cli_command, free_port

DEADLINE_S = 60.0


@pytest.fixture(autouse=True)
async def _encryption_off_afterwards(pool: asyncpg.Pool) -> AsyncIterator[None]:
    async for _ in switched_off_after(pool):
        yield


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli_command(), *args], env=clean_env(**env), cwd=ROOT,
                          capture_output=True, text=True, timeout=DEADLINE_S, check=False)


async def call(http: aiohttp.ClientSession, method: str, url: str, tenant: Tenant,
               status: int, **kwargs: Any) -> Any:
    headers = {**tenant.headers, **kwargs.pop("headers", {})}
    async with http.request(method, url, headers=headers, **kwargs) as r:
        body = await r.text()
        assert r.status == status, body
        return await r.json() if r.content_type == "application/json" else body


async def converse(server: Server, tenant: Tenant, said: str, streamed: str) -> str:
    """A session with one written message and one streamed answer; its id."""
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    async with aiohttp.ClientSession(server.base, timeout=timeout) as http:
        created = await call(http, "POST", "/api/v1/sessions", tenant, 201,
                             json={"user_id": "alice", "title": f"title of {said}"})
        assert created["title"] == f"title of {said}"
        sid = created["id"]
        body = {"role": "user", "content": said, "metadata": {"said": said}}
        idem = {"Idempotency-Key": f"k-{secrets.token_hex(6)}"}
        written = await call(http, "POST", f"/api/v1/sessions/{sid}/messages", tenant, 201,
                             json=body, headers=idem)
        assert written["content"] == said and written["metadata"] == {"said": said}
        # its recorded reply is sealed too, and a retry replays it
        async with http.post(f"/api/v1/sessions/{sid}/messages", json=body,
                             headers={**tenant.headers, **idem}) as r:
            assert r.status == 201 and r.headers["Idempotent-Replayed"] == "true"
            assert await r.json() == written
        async with http.ws_connect(f"/api/v1/sessions/{sid}/ws", headers=tenant.headers) as ws:
            await ws.send_json({"type": "stream.start", "ref": "s", "role": "assistant"})
            started = await ws.receive_json(timeout=DEADLINE_S)
            assert started["type"] == "stream.started", started
            half = len(streamed) // 2
            for part in (streamed[:half], streamed[half:]):  # the secret split across deltas
                await ws.send_json({"type": "stream.delta", "stream_id": started["stream_id"],
                                    "delta": part})
            await ws.send_json({"type": "stream.end", "stream_id": started["stream_id"],
                                "metadata": {"model": "m"}})
            for _ in range(20):
                frame = await ws.receive_json(timeout=DEADLINE_S)
                if frame["type"] in ("ack", "stream.completed", "error"):
                    break
            assert frame["type"] in ("ack", "stream.completed"), frame
    return str(sid)


async def read_back(server: Server, tenant: Tenant, sid: str) -> list[dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    async with aiohttp.ClientSession(server.base, timeout=timeout) as http:
        session = await call(http, "GET", f"/api/v1/sessions/{sid}", tenant, 200)
        assert session["title"].startswith("title of ")
        page = await call(http, "GET", f"/api/v1/sessions/{sid}/messages", tenant, 200)
        exported = await call(http, "GET", f"/api/v1/sessions/{sid}/export", tenant, 200,
                              params={"format": "jsonl"})
        for m in page["data"]:
            assert m["content"] in exported
        return list(page["data"])


@pytest.fixture
async def own_database() -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """A migrated database of this test alone: rotation re-wraps every data key there is,
    and the run's shared database holds other tests' keys under other KEKs."""
    name = f"chat_enc_{secrets.token_hex(4)}"
    url = await scratch.create(ADMIN_URL, name, DEFAULT_MIGRATIONS_DIR)
    pool = await db.create_pool(url, min_size=1, max_size=2)
    try:
        yield url, pool
    finally:
        await pool.close()
        await scratch.drop(ADMIN_URL, name)


async def test_an_encrypted_tenant_stores_ciphertext_and_reads_plain_text(
        own_database: tuple[str, asyncpg.Pool], tmp_path: Path) -> None:
    database_url, pool = own_database
    old_kek, new_kek = f"local:{secrets.token_hex(32)}", f"local:{secrets.token_hex(32)}"
    tenant, plain = await make_tenant(pool, "enc"), await make_tenant(pool, "plain")
    refused = cli("tenants", "update", tenant.name, "--encryption", "on",
                  DATABASE_URL=database_url)
    assert refused.returncode == 2 and "CHAT_ENCRYPTION_KEK" in refused.stderr
    done = cli("tenants", "update", tenant.name, "--encryption", "on",
               DATABASE_URL=database_url, CHAT_ENCRYPTION_KEK=old_kek)
    assert done.returncode == 0 and "encryption on" in done.stdout, done.stderr
    shown = cli("tenants", "show", tenant.name, "--json", DATABASE_URL=database_url)
    assert json.loads(shown.stdout)["encryption"] is True, shown.stderr
    listed = cli("tenants", "list", "--json", DATABASE_URL=database_url)
    by_name = {t["name"]: t["encryption"] for t in json.loads(listed.stdout)}
    assert by_name[tenant.name] is True and by_name[plain.name] is False
    assert re.search(r"encryption at rest\s+on", cli(
        "tenants", "show", tenant.name, DATABASE_URL=database_url).stdout)
    said, streamed = f"said-{secrets.token_hex(8)}", f"streamed-{secrets.token_hex(8)}"
    server = Server(database_url, tmp_path / "server.log",
                    env={"CHAT_ENCRYPTION_KEK": old_kek, "CHAT_LOG_LEVEL": "DEBUG"})
    await server.start()
    try:
        sid = await converse(server, tenant, said, streamed)
        visible = f"visible-{secrets.token_hex(8)}"
        psid = await converse(server, plain, visible, visible + "-streamed")
        messages = await read_back(server, tenant, sid)
        assert [m["content"] for m in messages] == [said, streamed]
        assert messages[0]["metadata"] == {"said": said}
        assert messages[1]["metadata"] == {"model": "m"} and messages[1]["status"] == "complete"
        assert [m["content"] for m in await read_back(server, plain, psid)] == [
            visible, visible + "-streamed"]
        timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
        async with aiohttp.ClientSession(server.base, timeout=timeout) as http:
            error = await call(http, "GET", "/api/v1/search", tenant, 409, params={"q": "said"})
            assert error["code"] == "conflict" and "encrypted at rest" in error["message"]
            await call(http, "GET", "/api/v1/search", plain, 200, params={"q": "visible"})
    finally:
        assert await server.stop() == 0
    stored = data_dump(database_url)
    assert said not in stored and streamed not in stored
    assert visible in stored  # an unencrypted tenant's content is there, as before
    log = server.log()
    assert '"msg":"listening"' in log or "listening" in log
    assert said not in log and streamed not in log

    # rotation: every data key re-wrapped under the new KEK, no message rewritten
    before = await pool.fetch("SELECT id, sealed FROM messages WHERE tenant_id = $1 "
                              "ORDER BY seq", tenant.id)
    rotated = cli("keys", "rotate-kek", DATABASE_URL=database_url,
                  CHAT_ENCRYPTION_KEK=new_kek, CHAT_ENCRYPTION_KEK_PREVIOUS=old_kek)
    assert rotated.returncode == 0, rotated.stderr
    assert "re-wrapped" in rotated.stdout
    assert await pool.fetch("SELECT id, sealed FROM messages WHERE tenant_id = $1 "
                            "ORDER BY seq", tenant.id) == before
    server.env["CHAT_ENCRYPTION_KEK"] = new_kek
    await server.start()
    try:
        assert [m["content"] for m in await read_back(server, tenant, sid)] == [said, streamed]
    finally:
        await server.stop()


@pytest.mark.parametrize("args", [("keys", "rotate-kek")])
def test_rotation_needs_both_keks(database_url: str, args: tuple[str, ...]) -> None:
    out = cli(*args, DATABASE_URL=database_url, CHAT_ENCRYPTION_KEK=f"local:{'a' * 64}")
    assert out.returncode == 2 and "CHAT_ENCRYPTION_KEK_PREVIOUS" in out.stderr


async def test_a_server_without_the_kek_refuses_to_start_while_a_tenant_is_encrypted(
        database_url: str, pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pool, "nokek")
    port = str(free_port())
    async with pool.acquire() as conn:
        await conn.execute("UPDATE tenants SET encrypted = true WHERE id = $1", tenant.id)
    try:
        # bounded by cli()'s deadline: a server that started would be killed there
        out = await asyncio.to_thread(cli, "serve", "--port", port, DATABASE_URL=database_url)
    finally:
        async with pool.acquire() as conn:
            await conn.execute("UPDATE tenants SET encrypted = false WHERE id = $1", tenant.id)
    assert out.returncode == 1
    assert "CHAT_ENCRYPTION_KEK is not set" in out.stderr and tenant.name in out.stderr
