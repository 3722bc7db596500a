"""Exports through the real server: formats parse back to exactly the stored history."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson

from chat_storage.server.jsonio import dumps
from chat_storage.storage import messages, sessions
from tests.conftest import Tenant
from tests.server.test_attachments import create, ready
from tests.server.test_sessions import SESSIONS, add_messages, new_session

RAG_MESSAGE = {
    "role": "assistant", "content": "Paris is the capital.\n\nIt is in France.",
    "context": [
        {"source_id": "doc-1", "title": "Capitals", "uri": "https://example.org/c",
         "snippet": "Paris is the capital\nof France.", "score": 0.87},
        {"source_id": "doc-2"},
    ],
    "metadata": {"model": "m1"},
    "usage": {"model": "m1", "prompt_tokens": 10, "completion_tokens": 5},
}


def normal(value: Any) -> Any:
    """``value`` as a client sees it in JSON."""
    return orjson.loads(dumps(value))


async def stored(pool: asyncpg.Pool, tenant: Tenant, session_id: str
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The session and its messages as the database holds them."""
    async with pool.acquire() as conn:
        session = await sessions.get(conn, tenant.id, uuid.UUID(session_id))
        rows = await conn.fetch(f"SELECT {messages.COLUMNS} FROM messages "
                                "WHERE session_id = $1 ORDER BY seq", uuid.UUID(session_id))
    return normal(session), normal([messages.to_json(r) for r in rows])


async def rag_session(client: Any, tenant: Tenant, n: int, user_id: str = "u1"
                      ) -> dict[str, Any]:
    """A session with ``n`` plain messages, then one with RAG sources."""
    s = await new_session(client, tenant, user_id, title="Capitals *quiz*",
                          metadata={"k": "v"})
    await add_messages(client, tenant, s["id"], n)
    r = await client.post(f"{SESSIONS}/{s['id']}/messages", json=RAG_MESSAGE,
                          headers=tenant.headers)
    assert r.status == 201, await r.text()
    return s


async def export(client: Any, tenant: Tenant, path: str, **params: str) -> tuple[Any, bytes]:
    r = await client.get(path, params=params, headers=tenant.headers)
    assert r.status == 200, await r.text()
    return r, await r.read()


async def test_json_export_equals_history(client: Any, tenant: Tenant,
                                          pool: asyncpg.Pool) -> None:
    s = await rag_session(client, tenant, 1000)  # 1001 messages: three pages of 500
    r, raw = await export(client, tenant, f"{SESSIONS}/{s['id']}/export", format="json")
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.headers["Content-Disposition"] == f'attachment; filename="session-{s["id"]}.json"'
    doc = orjson.loads(raw)
    session, history = await stored(pool, tenant, s["id"])
    assert doc == {"session": session, "messages": history, "attachments": []}
    assert [m["seq"] for m in doc["messages"]] == list(range(1, 1002))
    assert doc["messages"][-1]["context"][0]["snippet"] == "Paris is the capital\nof France."
    # json is the default
    _, again = await export(client, tenant, f"{SESSIONS}/{s['id']}/export")
    assert orjson.loads(again) == doc


async def test_jsonl_export_equals_history(client: Any, tenant: Tenant,
                                           pool: asyncpg.Pool) -> None:
    s = await rag_session(client, tenant, 499)  # exactly one full page
    r, raw = await export(client, tenant, f"{SESSIONS}/{s['id']}/export", format="jsonl")
    assert r.headers["Content-Type"] == "application/x-ndjson; charset=utf-8"
    assert r.headers["Content-Disposition"].endswith(f'filename="session-{s["id"]}.jsonl"')
    assert raw.endswith(b"\n")
    lines = [orjson.loads(line) for line in raw.splitlines()]
    session, history = await stored(pool, tenant, s["id"])
    assert lines[0] == {"type": "session", **session}
    assert lines[1:] == [{"type": "message", **m} for m in history]
    assert len(lines) == 501


async def test_markdown_export(client: Any, tenant: Tenant, pool: asyncpg.Pool) -> None:
    s = await rag_session(client, tenant, 2)
    r, raw = await export(client, tenant, f"{SESSIONS}/{s['id']}/export", format="markdown")
    assert r.headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert r.headers["Content-Disposition"].endswith(f'filename="session-{s["id"]}.md"')
    text = raw.decode()
    assert text.startswith("# Capitals *quiz*\n")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["## 1 · user", "## 2 · assistant", "## 3 · assistant"]
    _, history = await stored(pool, tenant, s["id"])
    # each message's content sits under its own heading, in seq order
    sections = text.split("\n## ")[1:]
    for section, message in zip(sections, history, strict=True):
        assert message["content"] in section
    last = sections[-1]
    assert "Sources:" in last
    assert "1. Capitals <https://example.org/c> (source doc-1, score 0.87)" in last
    assert "   > Paris is the capital\n   > of France." in last
    assert "2. doc-2 (source doc-2)" in last
    assert "Sources:" not in sections[0]


async def test_markdown_marks_deleted_messages(client: Any, tenant: Tenant) -> None:
    s = await new_session(client, tenant)
    r = await client.post(f"{SESSIONS}/{s['id']}/messages",
                          json={"role": "user", "content": "forget me"}, headers=tenant.headers)
    message = await r.json()
    r = await client.delete(f"{SESSIONS}/{s['id']}/messages/{message['id']}",
                            headers=tenant.headers)
    assert r.status == 204, await r.text()
    _, raw = await export(client, tenant, f"{SESSIONS}/{s['id']}/export", format="markdown")
    text = raw.decode()
    assert "## 1 · user (deleted)" in text
    assert "forget me" not in text
    assert text.startswith("# Untitled session\n")


async def test_export_errors(client: Any, tenant: Tenant, other_tenant: Tenant) -> None:
    s = await new_session(client, tenant)
    url = f"{SESSIONS}/{s['id']}/export"
    r = await client.get(url, params={"format": "pdf"}, headers=tenant.headers)
    assert r.status == 400
    body = await r.json()
    assert body["errors"][0]["field"] == "format"
    assert r.headers["Content-Type"].startswith("application/json")
    for fmt in ("json", "jsonl", "markdown"):
        r = await client.get(url, params={"format": fmt}, headers=other_tenant.headers)
        assert r.status == 404
        assert (await r.json())["message"] == "session not found"
        r = await client.get(f"{SESSIONS}/{uuid.uuid4()}/export", params={"format": fmt},
                             headers=tenant.headers)
        assert r.status == 404
    r = await client.get(url)
    assert r.status == 401


async def test_empty_session_exports(client: Any, tenant: Tenant, pool: asyncpg.Pool) -> None:
    s = await new_session(client, tenant)
    _, raw = await export(client, tenant, f"{SESSIONS}/{s['id']}/export")
    session, _ = await stored(pool, tenant, s["id"])
    assert orjson.loads(raw) == {"session": session, "messages": [], "attachments": []}


async def test_user_export_is_every_session_of_that_user(
    client: Any, tenant: Tenant, other_tenant: Tenant, pool: asyncpg.Pool
) -> None:
    first = await rag_session(client, tenant, 600, user_id="hana")
    second = await rag_session(client, tenant, 3, user_id="hana")
    empty = await new_session(client, tenant, "hana")
    await rag_session(client, tenant, 2, user_id="ivan")
    await rag_session(client, other_tenant, 2, user_id="hana")

    r, raw = await export(client, tenant, "/api/v1/users/hana/export")
    assert r.headers["Content-Type"] == "application/x-ndjson; charset=utf-8"
    assert r.headers["Content-Disposition"] == 'attachment; filename="user-hana-export.jsonl"'
    lines = [orjson.loads(line) for line in raw.splitlines()]
    expected: list[dict[str, Any]] = []
    for s in (first, second, empty):  # oldest first
        session, history = await stored(pool, tenant, s["id"])
        expected.append({"type": "session", **session})
        expected.extend({"type": "message", **m} for m in history)
    assert lines == expected

    _, raw = await export(client, tenant, "/api/v1/users/nobody/export")
    assert raw == b""
    _, raw = await export(client, other_tenant, "/api/v1/users/ivan/export")
    assert raw == b""
    r = await client.get(f"/api/v1/users/{'y' * 129}/export", headers=tenant.headers)
    assert r.status == 400


async def test_user_export_filename_is_safe(client: Any, tenant: Tenant) -> None:
    await new_session(client, tenant, 'we"ird/..\\name')
    r = await client.get("/api/v1/users/we%22ird%2F..%5Cname/export", headers=tenant.headers)
    assert r.status == 200, await r.text()
    assert r.headers["Content-Disposition"] == \
        'attachment; filename="user-we_ird_.._name-export.jsonl"'
    lines = (await r.read()).splitlines()
    assert len(lines) == 1
    assert orjson.loads(lines[0])["user_id"] == 'we"ird/..\\name'


async def test_exports_describe_the_attachments(client: Any, tenant: Tenant) -> None:
    s = await new_session(client, tenant, "jo")
    linked = await ready(client, tenant, s["id"])
    pending = (await create(client, tenant, s["id"]))["attachment"]
    r = await client.post(f"{SESSIONS}/{s['id']}/messages", headers=tenant.headers,
                          json={"role": "user", "content": "see", "attachment_ids": [linked]})
    message = await r.json()
    r = await client.get(f"{SESSIONS}/{s['id']}/attachments/{linked}", headers=tenant.headers)
    described = {k: v for k, v in (await r.json()).items() if k != "download_url"}
    expected = [described, pending]

    _, raw = await export(client, tenant, f"{SESSIONS}/{s['id']}/export", format="json")
    assert orjson.loads(raw)["attachments"] == expected
    _, raw = await export(client, tenant, f"{SESSIONS}/{s['id']}/export", format="jsonl")
    lines = [orjson.loads(line) for line in raw.splitlines()]
    assert [x["type"] for x in lines] == ["session", "message", "attachment", "attachment"]
    assert lines[2:] == [{"type": "attachment", **a} for a in expected]
    _, raw = await export(client, tenant, "/api/v1/users/jo/export")
    assert [orjson.loads(line) for line in raw.splitlines()][2:] == lines[2:]
    _, raw = await export(client, tenant, f"{SESSIONS}/{s['id']}/export", format="markdown")
    text = raw.decode()
    assert text.split("\n## Attachments\n\n")[1].splitlines() == [
        f"- notes.txt (text/plain, {described['size']} bytes, ready, message {message['id']}; "
        f"sha256 {described['sha256']})",
        f"- notes.txt (text/plain, {pending['size']} bytes, pending, not attached to a message; "
        f"sha256 {pending['sha256']})"]
