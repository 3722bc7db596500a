"""Tool calls in storage, against real Postgres: plain rows keep them in their columns,
sealed rows inside ``sealed`` (written, streamed to their end, read by every reader),
and rows sealed before tool calls existed still open."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chat_storage.storage import exports, history, ingest, messages, sessions, streams
from chat_storage.storage.crypto.envelope import associated, seal
from chat_storage.storage.crypto.kek import open_kek
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.switch import set_encryption
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.storage.privacy import redact_tool_calls
from chat_storage.storage.redaction import Redactor
from chat_storage.storage.writes import SessionBatch, insert_batches
from tests.conftest import Tenant, make_tenant

CALLS = [{"id": "call_1", "name": "lookup", "arguments": {"q": "refunds", "n": [1, 2]}}]


@pytest.fixture
async def keyring() -> AsyncIterator[Keyring]:
    ring = Keyring(await open_kek(f"local:{secrets.token_hex(32)}"), cache_s=60)
    yield ring
    await ring.close()


async def _conversation(conn: asyncpg.Connection, keyring: Keyring, tenant: Tenant,
                        streaming: bool = False) -> tuple[uuid.UUID, list[NewMessage]]:
    """A call, its reply and (``streaming``) an answer being streamed, which the caller
    must end: the run's sweepers (without a KEK) must never find it sealed and open."""
    sid = (await sessions.create(conn, tenant.id, user_id="agent"))["id"]
    sent = [NewMessage(id=new_id(), role="assistant", content="", tool_calls=CALLS),
            NewMessage(id=new_id(), role="tool", content="30 days", tool_call_id="call_1")]
    if streaming:
        sent.append(NewMessage(id=new_id(), role="assistant", content="", status="streaming"))
    [[stored]] = await insert_batches(
        conn, [SessionBatch(tenant.id, sid, [WriteGroup(sent)])], keyring)
    assert not isinstance(stored, Exception)
    assert [(m["tool_calls"], m["tool_call_id"]) for m in stored] == [
        (CALLS, None), (None, "call_1"), (None, None)][:len(sent)]
    return sid, sent


@pytest.mark.parametrize("sealed", [False, True])
async def test_tool_calls_are_stored_streamed_and_read_back(
        pool: asyncpg.Pool, keyring: Keyring, sealed: bool) -> None:
    tenant = await make_tenant(pool, "tools")
    async with pool.acquire() as conn:
        if sealed:
            assert await set_encryption(conn, tenant.name, True)
        sid, sent = await _conversation(conn, keyring, tenant, streaming=True)
        later = [{"id": "call_2", "name": "search", "arguments": {}}]
        ended = await streams.finish(conn, tenant.id, sid, sent[2].id, content="done",
                                     status="complete", tool_calls=later, keyring=keyring)
        assert ended["tool_calls"] == later
        expected = [(CALLS, None), (None, "call_1"), (later, None)]
        page = await history.history(conn, tenant.id, sid, limit=10, keyring=keyring)
        assert [(m["tool_calls"], m["tool_call_id"]) for m in page] == expected
        one = await messages.get(conn, tenant.id, sid, sent[1].id, keyring)
        assert one["tool_call_id"] == "call_1"
        [exported] = [p async for p in exports.message_pages(conn, tenant.id, sid,
                                                             keyring=keyring)]
        assert [(m["tool_calls"], m["tool_call_id"]) for m in exported] == expected
        rows = await conn.fetch("SELECT tool_calls, tool_call_id FROM messages "
                                "WHERE session_id = $1 ORDER BY seq", sid)
    plain = [(r["tool_calls"], r["tool_call_id"]) for r in rows]
    assert plain == ([(None, None)] * 3 if sealed else expected)


async def test_a_row_sealed_before_tool_calls_existed_opens_without_them(
        pool: asyncpg.Pool, keyring: Keyring) -> None:
    tenant = await make_tenant(pool, "old")
    async with pool.acquire() as conn:
        assert await set_encryption(conn, tenant.name, True)
        sid, sent = await _conversation(conn, keyring, tenant)
        key = await keyring.for_session(conn, tenant.id, sid)
        assert key is not None
        old = seal(key.aead, {"content": "old", "context": None, "metadata": {}},
                   associated(tenant.id, sid, sent[0].id))
        await conn.execute("UPDATE messages SET sealed = $1 WHERE id = $2", old, sent[0].id)
        got = await messages.get(conn, tenant.id, sid, sent[0].id, keyring)
    assert (got["content"], got["tool_calls"], got["tool_call_id"]) == ("old", None, None)


def test_ingest_entries_carry_tool_calls_and_older_entries_decode() -> None:
    sent = [NewMessage(id=new_id(), role="assistant", content="", tool_calls=CALLS),
            NewMessage(id=new_id(), role="tool", content="x", tool_call_id="call_1"),
            NewMessage(id=new_id(), role="user", content="plain")]
    entry = ingest.Entry(uuid.uuid4(), uuid.uuid4(), sent)
    assert ingest.decode(ingest.encode(entry)).messages == sent
    # an entry of a release without tool calls has no such keys at all
    assert b"tc" not in ingest.encode(ingest.Entry(uuid.uuid4(), uuid.uuid4(), sent[2:]))


def test_redaction_reaches_argument_text_at_any_depth_only() -> None:
    calls = [{"id": "a@b.example.com", "name": "mail", "arguments": {
        "to": "jane.roe@example.org", "n": 4111111111111111, "cc": [{"x": "ip 203.0.113.7"}]}}]
    assert redact_tool_calls(calls, Redactor.build("US", {})) == [{
        "id": "a@b.example.com", "name": "mail",
        "arguments": {"to": "<EMAIL>", "n": 4111111111111111, "cc": [{"x": "ip <IP>"}]}}]
