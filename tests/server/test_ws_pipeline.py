"""message.create frames are pipelined: a client need not wait for each ack."""

from __future__ import annotations

from typing import Any

import orjson

from tests.conftest import Tenant
from tests.support.streamkit import connect, new_session, recv


async def test_pipelined_creates_are_acked_in_order_with_consecutive_seq(
    client: Any, tenant: Tenant, pool: Any
) -> None:
    sid = await new_session(client, tenant)
    ws = await connect(client, tenant, sid)
    n = 120
    for i in range(n):  # all sent before any ack is read
        await ws.send_str(orjson.dumps(
            {"type": "message.create", "ref": f"c{i}", "role": "user", "content": f"m{i}"}
        ).decode())
    acks = [await recv(ws) for _ in range(n)]
    assert [a["type"] for a in acks] == ["ack"] * n
    assert [a["ref"] for a in acks] == [f"c{i}" for i in range(n)]
    assert [a["message"]["seq"] for a in acks] == list(range(1, n + 1))
    assert [a["message"]["content"] for a in acks] == [f"m{i}" for i in range(n)]
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT seq, content FROM messages WHERE session_id = $1 ORDER BY seq", sid)
    assert [(r["seq"], r["content"]) for r in rows] == [(i + 1, f"m{i}") for i in range(n)]
    await ws.close()


async def test_pipelined_create_errors_carry_their_ref(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    ws = await connect(client, tenant, sid)
    bad_parent = "0190b4c4-0000-7000-8000-000000000000"
    await ws.send_str(orjson.dumps({"type": "message.create", "ref": "ok1", "role": "user",
                                    "content": "a"}).decode())
    await ws.send_str(orjson.dumps({"type": "message.create", "ref": "bad", "role": "user",
                                    "content": "b", "parent_id": bad_parent}).decode())
    await ws.send_str(orjson.dumps({"type": "message.create", "ref": "ok2", "role": "user",
                                    "content": "c"}).decode())
    got = {f["ref"]: f for f in [await recv(ws) for _ in range(3)]}
    assert got["ok1"]["type"] == "ack" and got["ok2"]["type"] == "ack"
    assert got["bad"]["type"] == "error"
    assert got["ok1"]["message"]["seq"] < got["ok2"]["message"]["seq"]
    await ws.close()
