"""An encrypted tenant's attachments in the local store: sealed on disk, opened on download
(whole or by range), a changed file refused cleanly, shredded with the user. A running
server, the real Postgres and the real files under its data directory."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from chat_storage.storage.crypto.files import HEADER_BYTES, Opener, read_header
from chat_storage.storage.crypto.kek import open_kek
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.switch import set_encryption
from tests.conftest import Tenant, make_tenant
from tests.support.encryption import switched_off_after
from tests.support.procs import Server

TIMEOUT = aiohttp.ClientTimeout(total=60)
CACHE_S = 0.5


@pytest.fixture(autouse=True)
async def _encryption_off_afterwards(pool: asyncpg.Pool) -> AsyncIterator[None]:
    async for _ in switched_off_after(pool):
        yield


@pytest.fixture
async def kek() -> str:
    return f"local:{secrets.token_hex(32)}"


@pytest.fixture
async def server(database_url: str, tmp_path: Path, kek: str) -> AsyncIterator[Server]:
    # a short key cache: an erased user's key leaves the server's memory within it
    srv = Server(database_url, tmp_path / "server.log",
                 env={"CHAT_ENCRYPTION_KEK": kek, "CHAT_LOG_LEVEL": "DEBUG",
                      "CHAT_DATA_KEY_CACHE_S": str(CACHE_S)})
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def secret_file(marker: bytes) -> bytes:
    """About 200 KiB (several chunks) with ``marker`` in every chunk."""
    return b"".join(marker + secrets.token_bytes(997) for _ in range(200))


async def upload(http: aiohttp.ClientSession, tenant: Tenant, user: str,
                 data: bytes) -> tuple[str, str, str]:
    """A session of ``user`` with ``data`` uploaded and complete: (session, attachment,
    object key)."""
    async with http.post("/api/v1/sessions", json={"user_id": user},
                         headers=tenant.headers) as r:
        assert r.status == 201, await r.text()
        sid = (await r.json())["id"]
    announce = {"name": "card.bin", "mime": "application/octet-stream", "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}
    async with http.post(f"/api/v1/sessions/{sid}/attachments", json=announce,
                         headers=tenant.headers) as r:
        assert r.status == 201, await r.text()
        created = await r.json()
    target = created["upload"]
    async with http.request(target["method"], target["url"], data=data,
                            headers=target["headers"]) as r:
        assert r.status == 200, await r.text()
    aid = created["attachment"]["id"]
    async with http.post(f"/api/v1/sessions/{sid}/attachments/{aid}/complete",
                         headers=tenant.headers) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["size"] == len(data)
    return sid, aid, f"{tenant.id}/{sid}/{aid}"


async def download_url(http: aiohttp.ClientSession, tenant: Tenant, sid: str, aid: str) -> str:
    async with http.get(f"/api/v1/sessions/{sid}/attachments/{aid}",
                        headers=tenant.headers) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["download_url"])


async def get(http: aiohttp.ClientSession, url: str,
              headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    async with http.get(url, headers=headers or {}) as r:
        return r.status, await r.read(), r.headers


def holding(root: Path, needle: bytes) -> list[Path]:
    """Every file under ``root`` (the whole data directory, logs included) with ``needle``."""
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_an_encrypted_tenants_attachment_is_sealed_on_disk_and_downloads_exact(
        server: Server, pool: asyncpg.Pool, tmp_path: Path) -> None:
    enc, plain = await make_tenant(pool, "sealf"), await make_tenant(pool, "plainf")
    async with pool.acquire() as conn:
        await set_encryption(conn, enc.name, True)
    marker = b"SECRET-" + secrets.token_hex(8).encode()
    visible = b"PLAIN-" + secrets.token_hex(8).encode()
    data, plain_data = secret_file(marker), secret_file(visible)
    async with aiohttp.ClientSession(server.base, timeout=TIMEOUT) as http:
        sid, aid, key = await upload(http, enc, "alice", data)
        psid, paid, pkey = await upload(http, plain, "alice", plain_data)
        # on disk: the encrypted tenant's bytes nowhere under the data directory (nor
        # in the server's DEBUG log there); the plain tenant's are (the scan sees them)
        assert holding(tmp_path, marker) == []
        assert holding(tmp_path, visible) == [tmp_path / "objects" / pkey]
        header = read_header(tmp_path / "objects" / key)
        assert header is not None and header.size == len(data)
        assert read_header(tmp_path / "objects" / pkey) is None

        url = await download_url(http, enc, sid, aid)
        status, body, headers = await get(http, url)
        assert (status, body) == (200, data)
        assert int(headers["Content-Length"]) == len(data)
        assert headers["Content-Disposition"].startswith('attachment; filename="card.bin"')
        async with http.head(url) as r:  # HEAD: the plain length, no body
            assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
            assert await r.read() == b""
        status, body, _ = await get(http, await download_url(http, plain, psid, paid))
        assert (status, body) == (200, plain_data)

        # byte ranges are opened from the chunks they cover
        for asked, want in (("bytes=70000-140000", (70000, 140001)),
                            ("bytes=-10", (len(data) - 10, len(data))),
                            ("bytes=199000-", (199000, len(data))),
                            ("bytes=5-5", (5, 6))):
            status, body, headers = await get(http, url, {"Range": asked})
            assert (status, body) == (206, data[want[0]:want[1]]), asked
            assert int(headers["Content-Length"]) == want[1] - want[0]
            assert headers["Content-Range"] == f"bytes {want[0]}-{want[1] - 1}/{len(data)}"
        for asked in (f"bytes={len(data)}-", "bytes=0-1,5-6", "pages=1"):
            status, body, headers = await get(http, url, {"Range": asked})
            assert status == 416, asked
            assert headers["Content-Range"] == f"bytes */{len(data)}"
            assert b'"code":"validation_failed"' in body.replace(b" ", b"")

        # a changed byte in a chunk: a clean 500 with the error body, logged without content
        path = tmp_path / "objects" / key
        raw = bytearray(path.read_bytes())
        raw[HEADER_BYTES + 100_000] ^= 1
        path.write_bytes(bytes(raw))
        status, body, headers = await get(http, url)
        assert status == 500 and headers["Content-Type"].startswith("application/json")
        assert b"damaged" in body and b"Traceback" not in body and marker not in body
        # a range before the changed chunk still opens; one over it does not
        status, body, _ = await get(http, url, {"Range": "bytes=0-999"})
        assert (status, body) == (206, data[:1000])
        status, _, _ = await get(http, url, {"Range": "bytes=99000-101000"})
        assert status == 500
    log = server.log()
    assert "a sealed file does not open" in log and key in log
    assert marker.decode() not in log and "Traceback" not in log


async def test_an_erased_users_sealed_files_stay_shut_even_as_copies(
        server: Server, pool: asyncpg.Pool, tmp_path: Path, kek: str) -> None:
    enc = await make_tenant(pool, "shredf")
    async with pool.acquire() as conn:
        await set_encryption(conn, enc.name, True)
    data = {user: secret_file(f"{user}-{secrets.token_hex(6)}".encode())
            for user in ("alice", "bob")}
    async with aiohttp.ClientSession(server.base, timeout=TIMEOUT) as http:
        got = {user: await upload(http, enc, user, body) for user, body in data.items()}
        urls = {user: await download_url(http, enc, sid, aid)
                for user, (sid, aid, _) in got.items()}
        copies = tmp_path / "copies"
        copies.mkdir()
        for user, (*_, key) in got.items():  # what a disk snapshot would keep
            shutil.copy(tmp_path / "objects" / key, copies / user)
        async with http.delete("/api/v1/users/alice/sessions", headers=enc.headers) as r:
            assert r.status in (202, 204), await r.text()
        alice_key = got["alice"][2]
        assert not (tmp_path / "objects" / alice_key).exists()
        # the copy put back under its key, with a URL made before the erasure: nothing
        (tmp_path / "objects" / alice_key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(copies / "alice", tmp_path / "objects" / alice_key)
        # (once the key's cache entry expires: poll, bounded, past CHAT_DATA_KEY_CACHE_S)
        loop = asyncio.get_running_loop()
        until = loop.time() + 20 * CACHE_S
        status, body, _ = await get(http, urls["alice"])
        while status != 404 and loop.time() < until:
            await asyncio.sleep(CACHE_S / 5)
            status, body, _ = await get(http, urls["alice"])
        assert status == 404 and data["alice"][:20] not in body
        status, body, _ = await get(http, urls["bob"])  # another user's file still opens
        assert (status, body) == (200, data["bob"])
    # nor with the KEK itself: the data key is gone from the database
    keyring = Keyring(await open_kek(kek), cache_s=60)
    try:
        header = read_header(copies / "alice")
        assert header is not None
        async with pool.acquire() as conn:
            assert await keyring.by_ids(conn, {header.data_key_id}) == {}
            bob = read_header(copies / "bob")
            assert bob is not None
            [bob_key] = (await keyring.by_ids(conn, {bob.data_key_id})).values()
        opener = Opener(bob, bob_key, enc.id, got["bob"][2])
        with (copies / "bob").open("rb") as f:
            assert b"".join(opener.read(f, 0, bob.size)) == data["bob"]
    finally:
        await keyring.close()
