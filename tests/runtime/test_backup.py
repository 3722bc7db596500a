"""Backup and restore, end to end: a real server writes, ``backup`` copies, ``restore``
loads a fresh database and bucket, and a real server serves the restored copy.

Real Postgres, moto's S3 server, the real ``chat-storage`` command and server processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR
from chat_storage.storage import db
from tests.conftest import ADMIN_URL, Tenant, make_tenant
from tests.support import backupkit, motoserver, scratch
from tests.support.procs import Server, clean_env, cli_command

pytestmark = pytest.mark.timeout(300)

CONTEXT = [{"source_id": "doc-7", "title": "Manual", "snippet": "press the button",
            "score": 0.82}]
USAGE = {"model": "m-1", "prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}


@pytest.fixture
async def databases() -> AsyncIterator[tuple[str, str]]:
    """A migrated source database and an empty target database, dropped afterwards."""
    names = [f"chat_bk_{kind}_{secrets.token_hex(4)}" for kind in ("src", "dst")]
    source = await scratch.create(ADMIN_URL, names[0], DEFAULT_MIGRATIONS_DIR)
    target = await scratch.create(ADMIN_URL, names[1])
    try:
        yield source, target
    finally:
        for name in names:
            await scratch.drop(ADMIN_URL, name)


async def tenant_of(url: str, prefix: str) -> Tenant:
    pool = await db.create_pool(url, min_size=1, max_size=1)
    try:
        return await make_tenant(pool, prefix)
    finally:
        await pool.close()


class Api:
    """The HTTP API of one server, for one tenant."""

    def __init__(self, http: aiohttp.ClientSession, server: Server, tenant: Tenant) -> None:
        self.http, self.server, self.tenant = http, server, tenant

    async def call(self, method: str, path: str, status: int, **kw: Any) -> Any:
        headers = {**self.tenant.headers, **kw.pop("headers", {})}
        async with self.http.request(method, f"{self.server.base}/api/v1{path}",
                                     headers=headers, **kw) as r:
            assert r.status == status, await r.text()
            return await r.json() if r.status != 204 else None

    async def attachment(self, sid: str, data: bytes, name: str, *, upload: bool = True,
                         complete: bool = True) -> str:
        created = await self.call("POST", f"/sessions/{sid}/attachments", 201, json={
            "name": name, "mime": "text/plain", "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()})
        aid = str(created["attachment"]["id"])
        if upload:
            up = created["upload"]
            async with self.http.request(up["method"], up["url"], data=data,
                                         headers=up["headers"]) as r:
                assert r.status == 200
        if complete:
            await self.call("POST", f"/sessions/{sid}/attachments/{aid}/complete", 200)
        return aid

    async def stream_answer(self, sid: str, parts: list[str]) -> dict[str, Any]:
        """An assistant answer streamed over the WebSocket; its stored message."""
        url = f"{self.server.base}/api/v1/sessions/{sid}/ws"
        async with self.http.ws_connect(url, headers=self.tenant.headers) as ws:
            await ws.send_json({"type": "subscribe", "after_seq": 0})
            await ws.send_json({"type": "stream.start", "ref": "s1", "role": "assistant",
                                "context": CONTEXT, "metadata": {"k": "v"}})
            stream_id = None
            for _ in range(50):
                frame = await ws.receive_json(timeout=30)
                if frame["type"] == "stream.started" and frame.get("ref") == "s1":
                    stream_id = frame["stream_id"]
                    break
            assert stream_id is not None
            for part in parts:
                await ws.send_json({"type": "stream.delta", "stream_id": stream_id,
                                    "delta": part})
            await ws.send_json({"type": "stream.end", "stream_id": stream_id,
                                "metadata": {"usage_note": "streamed"}})
            for _ in range(200):
                frame = await ws.receive_json(timeout=30)
                if frame["type"] == "stream.completed":
                    return dict(frame["message"])
        raise AssertionError("the stream did not complete")


async def write_everything(api: Api, other: Api) -> dict[str, Any]:
    """Sessions, messages with context and usage, a streamed answer, attachments (ready,
    pending, never uploaded), a tombstone and idempotency records; what was written."""
    sid = str((await api.call("POST", "/sessions", 201, json={
        "user_id": "u1", "title": "first", "metadata": {"topic": "backup"}}))["id"])
    kept = await api.attachment(sid, b"kept file\n" * 100, "kept.txt")
    doomed = await api.attachment(sid, b"doomed file\n" * 10, "doomed.txt")
    await api.attachment(sid, b"uploaded, never completed", "pending.txt", complete=False)
    await api.attachment(sid, b"never uploaded", "missing.txt", upload=False, complete=False)
    await api.call("POST", f"/sessions/{sid}/messages", 201, json={
        "role": "user", "content": "Hello ü", "context": CONTEXT, "usage": USAGE,
        "attachment_ids": [kept]}, headers={"Idempotency-Key": "first-write"})
    gone = await api.call("POST", f"/sessions/{sid}/messages", 201, json={
        "role": "user", "content": "delete me", "attachment_ids": [doomed]})
    answer = await api.stream_answer(sid, ["Par", "tial ", "answer ✓"])
    assert answer["content"] == "Partial answer ✓"
    await api.call("DELETE", f"/sessions/{sid}/messages/{gone['id']}", 204)
    osid = str((await other.call("POST", "/sessions", 201, json={"user_id": "v"}))["id"])
    await other.call("POST", f"/sessions/{osid}/messages", 201, json={
        "role": "user", "content": "other tenant"}, headers={"Idempotency-Key": "k2"})
    history = await api.call("GET", f"/sessions/{sid}/messages", 200)
    return {"sid": sid, "kept": kept, "history": history}


async def test_a_backup_restored_into_a_fresh_database_and_bucket_serves_the_same_data(
    databases: tuple[str, str], s3_endpoint: str, tmp_path: Path
) -> None:
    source_url, target_url = databases
    buckets = {k: f"chat-bk-{k}-{secrets.token_hex(4)}" for k in ("src", "dst", "backups")}
    for name in buckets.values():
        await motoserver.make_bucket(s3_endpoint, name)
    tenant, other_tenant = await tenant_of(source_url, "bk"), await tenant_of(source_url, "bo")
    env = {**backupkit.s3_env(s3_endpoint, buckets["src"]), "CHAT_MAINTENANCE_INTERVAL_S": "0"}

    server = Server(source_url, tmp_path / "source.log", env=env)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            written = await write_everything(Api(http, server, tenant),
                                             Api(http, server, other_tenant))
    finally:
        assert await server.stop() == 0

    location = f"s3://{buckets['backups']}/nightly/1"
    done = backupkit.cli("backup", "--to", location, DATABASE_URL=source_url, **env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["location"] == location and report["objects"] == 2  # kept + pending
    assert report["missing_objects"] == 1  # the announced file never uploaded

    restore_env = {**backupkit.s3_env(s3_endpoint, buckets["dst"]),
                   "CHAT_MAINTENANCE_INTERVAL_S": "0"}
    done = backupkit.cli("restore", "--from", location, DATABASE_URL=target_url,
                         **restore_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == report["rows"]

    # every row, every sequence, every object
    assert await backupkit.rows(target_url) == await backupkit.rows(source_url)
    assert await backupkit.sequences(target_url) == await backupkit.sequences(source_url)
    source_objects = await backupkit.objects(s3_endpoint, buckets["src"])
    assert len(source_objects) == 2
    assert await backupkit.objects(s3_endpoint, buckets["dst"]) == source_objects

    restored = Server(target_url, tmp_path / "restored.log", env=restore_env)
    await restored.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, restored, tenant)  # its key was restored too
            sid = written["sid"]
            assert await api.call("GET", f"/sessions/{sid}/messages", 200) == written["history"]
            got = await api.call("GET", f"/sessions/{sid}/attachments/{written['kept']}", 200)
            async with http.get(got["download_url"]) as r:
                assert r.status == 200 and await r.read() == b"kept file\n" * 100
            # the idempotency record came back: a replay, not a second message
            async with http.post(f"{restored.base}/api/v1/sessions/{sid}/messages", json={
                    "role": "user", "content": "Hello ü", "context": CONTEXT, "usage": USAGE,
                    "attachment_ids": [written["kept"]]},
                    headers={**tenant.headers, "Idempotency-Key": "first-write"}) as r:
                assert r.status == 201 and r.headers.get("Idempotent-Replayed") == "true"
            new = await api.call("POST", f"/sessions/{sid}/messages", 201,
                                 json={"role": "user", "content": "after the restore"})
            assert new["seq"] == max(m["seq"] for m in written["history"]["data"]) + 1
            assert uuid.UUID(new["id"])
    finally:
        assert await restored.stop() == 0


async def test_a_backup_taken_while_writes_go_on_is_one_snapshot(
    databases: tuple[str, str], tmp_path: Path
) -> None:
    """Dump and manifest come from one snapshot: restore's own count and checksum check
    passes, and the snapshot lies strictly between the writes before and after."""
    source_url, target_url = databases
    env = {"DATABASE_URL": source_url, "CHAT_DATA_DIR": str(tmp_path / "data")}
    pool = await db.create_pool(source_url, min_size=1, max_size=1)
    try:
        await make_tenant(pool, "w")
        backup = await asyncio.create_subprocess_exec(
            *cli_command(), "backup", "--to", str(tmp_path / "b"), env=clean_env(**env),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        for _ in range(100_000):  # write until the backup is done
            if backup.returncode is not None:
                break
            await make_tenant(pool, "w")  # the loop notes the backup's exit meanwhile
        _, err = await backup.communicate()
        assert backup.returncode == 0, err.decode()
        async with pool.acquire() as conn:
            after = await conn.fetchval("SELECT count(*) FROM tenants")
    finally:
        await pool.close()
    in_backup = json.loads((tmp_path / "b" / "manifest.json").read_text())["tables"]["tenants"]
    assert 1 <= in_backup < after
    done = backupkit.cli("restore", "--from", str(tmp_path / "b"), DATABASE_URL=target_url,
                         CHAT_DATA_DIR=str(tmp_path / "data2"))
    assert done.returncode == 0, done.stderr
    assert len((await backupkit.rows(target_url))["tenants"]) == in_backup
