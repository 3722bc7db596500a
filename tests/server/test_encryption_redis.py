"""An encrypted tenant's text never rests in Redis in plain text; watchers still read it.

Real replicas (``chat-storage serve``) on a database of this test alone (a server of
another test started meanwhile without a KEK must not meet an encrypted tenant) and the
real Redis, under a prefix of their own. A secret is written every way there is: REST
create and batch, WebSocket ``message.create``, a streamed answer split across deltas
(ended, and another aborted), async ingestion (stored, and dead-lettered). Every key of
the prefix is read back (``tests/support/redisscan.py``) while a stream is live and
after everything ended: no secret, and no delta's distinctive text, is there; a plain
tenant's text written the same way is (the scan sees plain text where there is some).
Watchers on another replica get the exact plain text, live and when they join late.
The replicas' logs, at DEBUG, hold none of it either.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from chat_storage.actors.live import events
from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR
from chat_storage.storage import db, tenants
from tests.conftest import ADMIN_URL, REDIS_URL, Tenant, make_tenant
from tests.support import scratch
from tests.support.procs import Cluster, Server
from tests.support.procws import new_session, open_ws, subscriber
from tests.support.redisscan import everything
from tests.support.streamkit import rebuild, recv_until, start

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)


@pytest.fixture
async def own_db() -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    name = f"chat_encr_{secrets.token_hex(4)}"
    url = await scratch.create(ADMIN_URL, name, DEFAULT_MIGRATIONS_DIR)
    pool = await db.create_pool(url, min_size=1, max_size=2)
    try:
        yield url, pool
    finally:
        await pool.close()
        await scratch.drop(ADMIN_URL, name)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


def secret(label: str) -> str:
    return f"{label}-{secrets.token_hex(10)}"


async def post(http: aiohttp.ClientSession, url: str, tenant: Tenant, body: Any,
               status: int) -> Any:
    async with http.post(url, json=body, headers=tenant.headers) as r:
        assert r.status == status, await r.text()
        return await r.json()


async def write_every_way(http: aiohttp.ClientSession, a: Server, tenant: Tenant, sid: str,
                          said: dict[str, str]) -> None:
    """REST create, batch and WebSocket ``message.create`` of ``said``'s secrets."""
    url = f"{a.base}/api/v1/sessions/{sid}/messages"
    await post(http, url, tenant, {"role": "user", "content": said["create"],
                                   "metadata": {"m": said["meta"]}}, 201)
    await post(http, url + "/batch", tenant, {"messages": [
        {"role": "user", "content": said["batch"]}]}, 201)
    ws = await open_ws(http, a, tenant, sid)
    await ws.send_json({"type": "message.create", "ref": "c", "role": "user",
                        "content": said["ws"]})
    frames = await recv_until(ws, lambda f: f.get("ref") == "c")
    assert frames[-1]["type"] == "ack", frames[-1]
    await ws.close()


async def test_an_encrypted_tenants_text_is_never_plain_in_redis(
        own_db: tuple[str, asyncpg.Pool], tmp_path: Path, redis: Redis) -> None:
    database_url, pool = own_db
    kek = {"CHAT_ENCRYPTION_KEK": f"local:{secrets.token_hex(32)}", "CHAT_LOG_LEVEL": "DEBUG"}
    enc, plain = await make_tenant(pool, "enc"), await make_tenant(pool, "plain")
    redacting = await make_tenant(pool, "pii")
    await pool.execute("UPDATE tenants SET encrypted = true WHERE id = $1", enc.id)
    async with pool.acquire() as conn:
        await tenants.update_tenant(conn, redacting.name, redact_pii=True)
    cluster = Cluster(database_url, tmp_path)
    try:
        a, b = await cluster.start(2, env=kek)
        [c] = await cluster.start(1, env={**kek, "CHAT_INGEST_MODE": "async"})
        said = {k: secret(k) for k in ("create", "meta", "batch", "ws", "ingest")}
        streamed = [secret("d1"), secret("d2"), secret("d3")]
        aborted = [secret("x1"), secret("x2")]
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            sid = await new_session(http, a, enc)
            watcher = await subscriber(http, b, enc, sid)
            await write_every_way(http, a, enc, sid, said)

            # a stream, live: its deltas are in Redis sealed, and a late joiner on C (no
            # feed there yet) gets them: its snapshot comes from the sealed deltas it opens
            producer = await open_ws(http, a, enc, sid)
            stream_id = (await start(producer, role="assistant"))["stream_id"]
            for part in streamed[:2]:
                await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                          "delta": part})
            await watcher.wait(lambda fs: rebuild(fs, stream_id) == "".join(streamed[:2]))
            late = await subscriber(http, c, enc, sid)
            live = await everything(redis, cluster.prefix)
            assert stream_id.encode() in live  # the scan sees the live stream's events
            for text in [*said.values(), *streamed[:2]]:
                assert text.encode() not in live, text
            await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                      "delta": streamed[2]})
            await producer.send_json({"type": "stream.end", "stream_id": stream_id,
                                      "ref": "e"})
            await recv_until(producer, lambda f: f.get("ref") == "e")
            other = (await start(producer, ref="s2", role="assistant"))["stream_id"]
            for part in aborted:
                await producer.send_json({"type": "stream.delta", "stream_id": other,
                                          "delta": part})
            await producer.send_json({"type": "stream.abort", "stream_id": other, "ref": "a"})
            await recv_until(producer, lambda f: f.get("ref") == "a")
            await producer.close()

            # async ingestion: stored, and one dead-lettered (a parent that is not there)
            curl = f"{c.base}/api/v1/sessions/{sid}/messages"
            accepted = await post(http, curl, enc, {"role": "user", "content": said["ingest"]},
                                  202)
            dead = secret("dead")
            await post(http, curl, enc, {"role": "user", "content": dead,
                                         "parent_id": str(uuid.uuid4())}, 202)
            await post(http, f"{c.base}/api/v1/sessions/{uuid.uuid4()}/messages", enc,
                       {"role": "user", "content": "nowhere"}, 404)

            def whole(fs: list[dict[str, Any]]) -> bool:
                return any(f["type"] == events.CREATED and f["message"]["id"] == accepted["id"]
                           for f in fs) and any(f["type"] == events.ABORTED for f in fs)
            await watcher.wait(whole)
            await late.wait(whole)
            for reader in (watcher, late):
                assert rebuild(reader.frames, stream_id) == "".join(streamed)
                created = [f["message"]["content"] for f in reader.frames
                           if f["type"] == events.CREATED]
                finals = {f["type"]: f["message"]["content"] for f in reader.frames
                          if f["type"] in events.FINALS}
                assert created == [said["create"], said["batch"], said["ws"], said["ingest"]]
                assert finals == {events.COMPLETED: "".join(streamed),
                                  events.ABORTED: "".join(aborted)}
            first = next(f for f in watcher.frames if f["type"] == events.CREATED)
            assert first["message"]["metadata"] == {"m": said["meta"]}
            await watcher.close()
            await late.close()

            # a plain tenant, the same ways: its text is in Redis (the scan can see it)
            psid = await new_session(http, a, plain)
            shown = {k: secret("plain-" + k) for k in said}
            await write_every_way(http, a, plain, psid, shown)
            pws = await open_ws(http, a, plain, psid)
            pstream = (await start(pws, role="assistant"))["stream_id"]
            await pws.send_json({"type": "stream.delta", "stream_id": pstream,
                                 "delta": shown["ingest"]})
            await pws.send_json({"type": "stream.end", "stream_id": pstream, "ref": "e"})
            await recv_until(pws, lambda f: f.get("ref") == "e")
            await pws.close()
            await post(http, f"{c.base}/api/v1/sessions/{psid}/messages", plain,
                       {"role": "user", "content": "plain-dead-" + shown["create"],
                        "parent_id": str(uuid.uuid4())}, 202)
            async with asyncio.timeout(30):
                while b"plain-dead-" not in await redis_dead(  # noqa: ASYNC110 - polls Redis
                        redis, cluster.prefix):
                    await asyncio.sleep(0.05)

            # a redacting tenant's aborted stream: watchers saw the address; once the
            # stream is stored (redacted), its deltas leave Redis
            rsid = await new_session(http, a, redacting)
            rwatcher = await subscriber(http, b, redacting, rsid)
            rws = await open_ws(http, a, redacting, rsid)
            rstream = (await start(rws, role="assistant"))["stream_id"]
            address = ["write to jane.", f"roe-{secrets.token_hex(4)}@exa", "mple.org now"]
            for part in address:
                await rws.send_json({"type": "stream.delta", "stream_id": rstream,
                                     "delta": part})
            await rws.send_json({"type": "stream.abort", "stream_id": rstream, "ref": "a"})
            await recv_until(rws, lambda f: f.get("ref") == "a")
            await rws.close()
            await rwatcher.wait(lambda fs: any(f["type"] == events.ABORTED for f in fs))
            assert rebuild(rwatcher.frames, rstream) == "".join(address)
            [final] = [f for f in rwatcher.frames if f["type"] == events.ABORTED]
            assert final["message"]["content"] == "write to <EMAIL> now"
            await rwatcher.close()
            async with asyncio.timeout(10):  # the scrub follows the final event
                while address[1].encode() in await everything(  # noqa: ASYNC110 - polls Redis
                        redis, cluster.prefix):
                    await asyncio.sleep(0.05)

        after = await everything(redis, cluster.prefix)
        for text in [*said.values(), *streamed, *aborted, dead]:
            assert text.encode() not in after, text
        assert await redis.xlen(f"{cluster.prefix}:ingest:dead") == 2  # both, sealed or not
        for text in shown.values():
            assert text.encode() in after, text
        for server in cluster.servers:
            log = server.log()
            assert "listening" in log  # the log is there to search, at DEBUG
            for text in [*said.values(), *streamed, *aborted, dead]:
                assert text not in log, (server.log_path.name, text)
    finally:
        await pool.execute("UPDATE tenants SET encrypted = false WHERE encrypted")
        await cluster.close()


async def redis_dead(redis: Redis, prefix: str) -> bytes:
    """The ingest dead-letter stream's entries, as bytes."""
    entries = await redis.xrange(f"{prefix}:ingest:dead", "-", "+")
    return b"\n".join(v for _, fields in entries for v in fields.values())
