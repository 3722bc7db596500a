"""The exact bytes of history pages and of one message, pinned field by field.

Rows are written straight into Postgres with every field set (or null) and awkward
values: timestamps with and without microseconds, strings that need escaping,
numbers jsonb rewrites, linked attachments out of link order, tool calls in metadata
and in their own columns,
a streaming message and a tombstone. The expected documents are written out here,
so a change of how a page is built (in Python or by Postgres) must produce the same
bytes to pass.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import orjson

from chat_storage.server import pagination
from tests.conftest import Tenant

UTC = dt.UTC
TRICKY = ('say "hi" \\ back\nline\ttab \x01\x1f é 漢字 😀 \u2028 / <b>&amp;</b>')


async def _load(pool: asyncpg.Pool, tenant: Tenant) -> dict[str, uuid.UUID]:
    ids = {name: uuid.uuid4() for name in ("s", "m1", "m2", "m3", "m4", "a1", "a2", "a3")}
    t = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO sessions (id, tenant_id, user_id, last_seq, message_count) "
            "VALUES ($1, $2, 'u1', 4, 4)", ids["s"], tenant.id)
        rows: list[tuple[Any, ...]] = [
            (ids["m1"], 1, None, "user", TRICKY, "user-1", None, {}, None, None,
             "complete", t, None),
            (ids["m2"], 2, ids["m1"], "assistant", "Answer.",
             None,
             [{"source": "kb/a.txt", "score": 0.875, "chunk": 3, "text": "x",
               "meta": {"page": 1, "tags": ["a", "b"], "none": None}}],
             {"model": "gpt", "temperature": 0.1, "big": 12345678901234, "neg": -1.5e-7,
              "flag": True, "ünï": "✓", "empty": {}, "list": [],
              "tool_calls": [{"id": "call_1", "type": "function",
                              "function": {"name": "search", "arguments": '{"q": "x"}'}}]},
             {"prompt_tokens": 812, "completion_tokens": 95, "total_tokens": 907},
             {"rating": 1, "comment": "good"},
             "complete", t.replace(microsecond=123000), t.replace(microsecond=5)),
            (ids["m3"], 3, None, "tool", '{"result": 42}', None, None,
             {"tool_call_id": "call_1"}, None, None, "streaming",
             t.replace(microsecond=999999), None),
            (ids["m4"], 4, None, "assistant", "", None, None, {}, None, None, "deleted",
             t + dt.timedelta(days=400), t + dt.timedelta(days=400, seconds=1)),
        ]
        for (mid, seq, parent, role, content, sender, context, metadata, usage, feedback,
             status, created, completed) in rows:
            await conn.execute(
                "INSERT INTO messages (id, tenant_id, session_id, seq, parent_id, role, "
                "content, sender_id, context, metadata, usage, feedback, feedback_at, status, "
                "created_at, completed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
                "$11, $12, CASE WHEN $12::jsonb IS NULL THEN NULL ELSE now() END, $13, $14, "
                "$15)", mid, tenant.id, ids["s"], seq, parent, role, content, sender, context,
                metadata, usage, feedback, status, created, completed)
        # the tool call columns (jsonb orders an object's keys: shorter first)
        await conn.execute(
            "UPDATE messages SET tool_calls = $2 WHERE id = $1", ids["m2"],
            [{"name": "search", "arguments": {"q": 'x "y"', "n": [1]}, "id": "call_1"}])
        await conn.execute("UPDATE messages SET tool_call_id = 'call_1' WHERE id = $1",
                           ids["m3"])
        for aid, message, pos, status, name in (
            (ids["a1"], ids["m2"], 1, "ready", "second.pdf"),
            (ids["a2"], ids["m2"], 0, "ready", 'first "q".png'),
            (ids["a3"], None, None, "pending", "unlinked.txt"),
        ):
            await conn.execute(
                "INSERT INTO attachments (id, tenant_id, session_id, message_id, name, mime, "
                "size, sha256, object_key, status, link_pos) VALUES ($1, $2, $3, $4, $5, "
                "'application/pdf', 4096, $6, 'k', $7, $8)",
                aid, tenant.id, ids["s"], message, name, "ab" * 32, status, pos)
    return ids


M1 = ('{"id":"%(m1)s","session_id":"%(s)s","seq":1,"parent_id":null,"role":"user",'
      '"content":"say \\"hi\\" \\\\ back\\nline\\ttab \\u0001\\u001f é 漢字 😀 \u2028 / '
      '<b>&amp;</b>","sender_id":"user-1","context":null,"metadata":{},"usage":null,'
      '"feedback":null,"status":"complete","created_at":"2026-03-04T05:06:07Z",'
      '"completed_at":null,"attachments":[],"tool_calls":null,"tool_call_id":null}')
M2 = ('{"id":"%(m2)s","session_id":"%(s)s","seq":2,"parent_id":"%(m1)s","role":"assistant",'
      '"content":"Answer.","sender_id":null,"context":[{"meta":{"none":null,"page":1,'
      '"tags":["a","b"]},"text":"x","chunk":3,"score":0.875,"source":"kb/a.txt"}],'
      '"metadata":{"big":12345678901234,"neg":-1.5e-7,"flag":true,"list":[],"empty":{},'
      '"model":"gpt","ünï":"✓","tool_calls":[{"id":"call_1","type":"function","function":'
      '{"name":"search","arguments":"{\\"q\\": \\"x\\"}"}}],"temperature":0.1},'
      '"usage":{"total_tokens":907,"prompt_tokens":812,"completion_tokens":95},'
      '"feedback":{"rating":1,"comment":"good"},"status":"complete",'
      '"created_at":"2026-03-04T05:06:07.123000Z","completed_at":"2026-03-04T05:06:07.000005Z",'
      '"attachments":[{"id":"%(a2)s","name":"first \\"q\\".png","mime":"application/pdf",'
      '"size":4096,"sha256":"' + "ab" * 32 + '","status":"ready"},{"id":"%(a1)s",'
      '"name":"second.pdf","mime":"application/pdf","size":4096,"sha256":"' + "ab" * 32 +
      '","status":"ready"}],"tool_calls":[{"id":"call_1","name":"search","arguments":'
      '{"n":[1],"q":"x \\"y\\""}}],"tool_call_id":null}')
M3 = ('{"id":"%(m3)s","session_id":"%(s)s","seq":3,"parent_id":null,"role":"tool",'
      '"content":"{\\"result\\": 42}","sender_id":null,"context":null,'
      '"metadata":{"tool_call_id":"call_1"},"usage":null,"feedback":null,"status":"streaming",'
      '"created_at":"2026-03-04T05:06:07.999999Z","completed_at":null,"attachments":[],'
      '"tool_calls":null,"tool_call_id":"call_1"}')
M4 = ('{"id":"%(m4)s","session_id":"%(s)s","seq":4,"parent_id":null,"role":"assistant",'
      '"content":"","sender_id":null,"context":null,"metadata":{},"usage":null,'
      '"feedback":null,"status":"deleted","created_at":"2027-04-08T05:06:07Z",'
      '"completed_at":"2027-04-08T05:06:08Z","attachments":[],"tool_calls":null,'
      '"tool_call_id":null}')


def _page(ids: dict[str, uuid.UUID], messages: list[str], cursor: str | None) -> bytes:
    text = '{"data":[' + ",".join(messages) + '],"next_cursor":'
    text += "null" if cursor is None else f'"{cursor}"'
    text += ',"has_more":' + ("false" if cursor is None else "true") + "}"
    return (text % {k: str(v) for k, v in ids.items()}).encode()


async def _get(client: Any, tenant: Tenant, path: str) -> bytes:
    r = await client.get(path, headers=tenant.headers)
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    body: bytes = await r.read()
    orjson.loads(body)  # valid JSON, whatever else
    return body


async def test_history_pages_are_pinned_to_the_byte(
    client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    ids = await _load(pool, tenant)
    url = f"/api/v1/sessions/{ids['s']}/messages"

    def cursor(order: str, seq: int, leaf: uuid.UUID | None = None) -> str:
        scope = pagination.scope_of("messages", tenant.id, ids["s"], order, leaf, None, None)
        return pagination.encode(scope, [seq])

    assert await _get(client, tenant, url) == _page(ids, [M1, M2, M3, M4], None)
    assert await _get(client, tenant, f"{url}?limit=2") == _page(
        ids, [M1, M2], cursor("asc", 2))
    assert await _get(client, tenant, f"{url}?limit=2&cursor={cursor('asc', 2)}") == _page(
        ids, [M3, M4], None)
    assert await _get(client, tenant, f"{url}?order=desc&limit=3") == _page(
        ids, [M4, M3, M2], cursor("desc", 2))
    assert await _get(client, tenant, f"{url}?order=desc&cursor={cursor('desc', 2)}") == \
        _page(ids, [M1], None)
    assert await _get(client, tenant, f"{url}?after_seq=1&before_seq=3") == _page(
        ids, [M2], None)
    # one branch: m2 walks to its parent m1
    assert await _get(client, tenant, f"{url}?leaf={ids['m2']}") == _page(ids, [M1, M2], None)
    assert await _get(client, tenant, f"{url}?leaf={ids['m2']}&order=desc&limit=1") == _page(
        ids, [M2], cursor("desc", 2, ids["m2"]))
    # past the end: an empty page, still a 200
    assert await _get(client, tenant, f"{url}?after_seq=4") == _page(ids, [], None)


async def test_one_message_is_pinned_to_the_byte(
    client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    ids = await _load(pool, tenant)
    for name, expected in (("m1", M1), ("m2", M2), ("m3", M3), ("m4", M4)):
        body = await _get(client, tenant, f"/api/v1/sessions/{ids['s']}/messages/{ids[name]}")
        assert body == (expected % {k: str(v) for k, v in ids.items()}).encode()
