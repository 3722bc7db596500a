"""WebSocket writes take from the rate-limit bucket of HTTP (issue 17, finding 8).

Before, 1,000 ``message.create`` frames were acked on a key HTTP answered 429 for.
The tenant's limits are set before its key is first used (the principal is cached with
them); a refill of one token per 100 s keeps every count exact. Every HTTP request
takes a token too: creating the session and the WebSocket's upgrade each take one.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from chat_storage.server.ratelimit import DELTA_CHARS_PER_TOKEN
from tests.conftest import Tenant
from tests.server.test_limits import set_tenant
from tests.support.streamkit import connect, new_session, recv, recv_until, start

SLOW = 0.01  # tokens per second: none comes back during a test


async def stored(pool: asyncpg.Pool, sid: str) -> int:
    async with pool.acquire() as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE session_id = $1::uuid", sid)
    return count


def is_rate_limited(frame: dict[str, Any], ref: str | None) -> bool:
    return (frame.get("type") == "error" and frame.get("code") == "rate_limited"
            and frame.get("ref") == ref and frame.get("retry_after", 0) >= 50)


async def test_ws_writes_are_refused_when_http_has_spent_the_bucket(
    client: Any, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    await set_tenant(pool, tenant, rate_limit_per_s=SLOW, rate_limit_burst=3)
    sid = await new_session(client, tenant)  # 1
    ws = await connect(client, tenant, sid)  # 2
    r = await client.get("/api/v1/sessions", headers=tenant.headers)  # 3
    assert r.status == 200
    r = await client.get("/api/v1/sessions", headers=tenant.headers)
    assert r.status == 429
    await ws.send_json({"type": "message.create", "ref": "c1", "role": "user", "content": "x"})
    assert is_rate_limited(await recv(ws), "c1")
    await ws.send_json({"type": "stream.start", "ref": "s1"})
    assert is_rate_limited(await recv(ws), "s1")
    # reading is not writing: ping and subscribe still answer
    await ws.send_json({"type": "ping", "ref": "p"})
    assert await recv(ws) == {"type": "pong", "ref": "p"}
    assert await stored(pool, sid) == 0


async def test_ws_writes_spend_the_bucket_http_takes_from(
    client: Any, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    await set_tenant(pool, tenant, rate_limit_per_s=SLOW, rate_limit_burst=6)
    sid = await new_session(client, tenant)  # 1
    ws = await connect(client, tenant, sid)  # 2
    for i in range(3):  # 3, 4, 5
        await ws.send_json({"type": "message.create", "ref": f"c{i}", "role": "user",
                            "content": "x"})
    acks = await recv_until(ws, lambda f: f.get("ref") == "c2")
    assert [f["type"] for f in acks] == ["ack"] * 3
    await start(ws, ref="s")  # 6
    await ws.send_json({"type": "message.create", "ref": "late", "role": "user",
                        "content": "x"})
    assert is_rate_limited(await recv(ws), "late")
    r = await client.get("/api/v1/sessions", headers=tenant.headers)
    assert r.status == 429
    assert await stored(pool, sid) == 4  # three messages and the stream's row


async def test_deltas_take_a_token_per_volume(
    client: Any, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    await set_tenant(pool, tenant, rate_limit_per_s=SLOW, rate_limit_burst=5)
    sid = await new_session(client, tenant)  # 1
    ws = await connect(client, tenant, sid)  # 2
    stream_id = (await start(ws, ref="s"))["stream_id"]  # 3
    chunk = "a" * (DELTA_CHARS_PER_TOKEN // 2)
    for _ in range(4):  # two tokens' worth: 4 and 5
        await ws.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": chunk})
    await ws.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "b" * 10})
    await ws.send_json({"type": "stream.delta", "stream_id": stream_id,
                        "delta": "c" * DELTA_CHARS_PER_TOKEN})
    assert is_rate_limited(await recv(ws), None)
    # a refused delta is not counted: a small one after it still fits in the volume
    await ws.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "d" * 10})
    await ws.send_json({"type": "stream.end", "ref": "e", "stream_id": stream_id})
    done = (await recv_until(ws, lambda f: f.get("ref") == "e"))[-1]
    # the refused delta was not appended; the small ones around it were
    assert done["type"] == "stream.completed", done
    assert done["message"]["content"] == chunk * 4 + "b" * 10 + "d" * 10
