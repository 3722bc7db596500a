"""A message lists its attachments (history, GET, ack, events); a session lists its own.

Runs on the real server with the local store, as ``test_attachments`` does.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import asyncpg

from chat_storage.storage import history
from tests.conftest import Tenant
from tests.server.test_attachments import DATA, create, fetch, ready
from tests.server.test_messages import add, error_of, new_session
from tests.server.test_messages import history as history_page
from tests.support.streamkit import connect, recv, subscribe


def linked(attachment: dict[str, Any]) -> dict[str, Any]:
    """What a message object says of an attachment."""
    return {k: attachment[k] for k in ("id", "name", "mime", "size", "sha256", "status")}


async def named(client: Any, tenant: Tenant, sid: str, name: str) -> dict[str, Any]:
    """A ready attachment called ``name``, as its GET answers it."""
    data = name.encode() + DATA
    created = await create(client, tenant, sid, data, name=name)
    aid = created["attachment"]["id"]
    async with client.session.request(created["upload"]["method"], created["upload"]["url"],
                                      data=data, headers=created["upload"]["headers"]) as r:
        assert r.status == 200
    r = await client.post(f"/api/v1/sessions/{sid}/attachments/{aid}/complete",
                          headers=tenant.headers)
    assert r.status == 200, await r.text()
    return await fetch(client, tenant, sid, aid)


async def get_message(client: Any, tenant: Tenant, sid: str, mid: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/sessions/{sid}/messages/{mid}", headers=tenant.headers)
    assert r.status == 200, await r.text()
    return dict(await r.json())


async def test_messages_carry_their_attachments_in_link_order(
    client: Any, tenant: Tenant
) -> None:
    sid = await new_session(client, tenant)
    a, b, c = [await named(client, tenant, sid, n) for n in ("a.txt", "b.txt", "c.txt")]
    watcher = await connect(client, tenant, sid)
    await subscribe(watcher)

    # REST: the 201, the message.created event, GET and history, in attachment_ids order
    message = await add(client, tenant, sid, attachment_ids=[c["id"], a["id"]])
    assert message["attachments"] == [linked(c), linked(a)]
    assert all(x["status"] == "ready" for x in message["attachments"])
    event = await recv(watcher)
    assert event == {"type": "message.created", "message": message}
    assert await get_message(client, tenant, sid, message["id"]) == message
    plain = await add(client, tenant, sid)
    assert plain["attachments"] == []
    assert (await recv(watcher))["message"]["attachments"] == []

    # WebSocket: the ack and the event
    writer = await connect(client, tenant, sid)
    await writer.send_json({"type": "message.create", "ref": "w", "role": "user",
                            "content": "via ws", "attachment_ids": [b["id"]]})
    ack = await recv(writer)
    assert ack["type"] == "ack" and ack["message"]["attachments"] == [linked(b)]
    assert (await recv(watcher)) == {"type": "message.created", "message": ack["message"]}

    page = await history_page(client, tenant, sid)
    assert [m["attachments"] for m in page["data"]] == [
        [linked(c), linked(a)], [], [linked(b)]]
    assert page["data"][0] == message
    desc = await history_page(client, tenant, sid, order="desc", limit=1)
    assert desc["data"][0]["attachments"] == [linked(b)]

    # a metadata edit keeps them; a tombstone erases them (rows and listing too)
    r = await client.patch(f"/api/v1/sessions/{sid}/messages/{message['id']}",
                           json={"metadata": {"k": 1}}, headers=tenant.headers)
    assert r.status == 200 and (await r.json())["attachments"] == [linked(c), linked(a)]
    r = await client.delete(f"/api/v1/sessions/{sid}/messages/{message['id']}",
                            headers=tenant.headers)
    assert r.status == 204
    gone = await get_message(client, tenant, sid, message["id"])
    assert gone["status"] == "deleted" and gone["attachments"] == []
    r = await client.get(f"/api/v1/sessions/{sid}/attachments", headers=tenant.headers)
    assert [x["id"] for x in (await r.json())["data"]] == [b["id"]]
    await watcher.close()
    await writer.close()


async def test_batch_and_replay_carry_the_attachments(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    a, b = await named(client, tenant, sid, "a.txt"), await named(client, tenant, sid, "b.txt")
    headers = {**tenant.headers, "Idempotency-Key": "batch-1"}
    body = {"messages": [{"role": "user", "content": "one", "attachment_ids": [b["id"]]},
                         {"role": "assistant", "content": "two"},
                         {"role": "user", "content": "three", "attachment_ids": [a["id"]]}]}
    r = await client.post(f"/api/v1/sessions/{sid}/messages/batch", json=body, headers=headers)
    assert r.status == 201, await r.text()
    first = await r.json()
    assert [m["attachments"] for m in first["data"]] == [[linked(b)], [], [linked(a)]]
    r = await client.post(f"/api/v1/sessions/{sid}/messages/batch", json=body, headers=headers)
    assert r.status == 201 and await r.json() == first


async def test_the_list_route_pages_filters_and_isolates_tenants(
    client: Any, tenant: Tenant, other_tenant: Tenant
) -> None:
    sid = await new_session(client, tenant)
    url = f"/api/v1/sessions/{sid}/attachments"
    r = await client.get(url, headers=tenant.headers)
    assert r.status == 200
    assert await r.json() == {"data": [], "next_cursor": None, "has_more": False}

    ready_ids = [await ready(client, tenant, sid) for _ in range(3)]
    pending_ids = [(await create(client, tenant, sid))["attachment"]["id"] for _ in range(2)]
    await add(client, tenant, sid, attachment_ids=[ready_ids[1]])
    in_order = ready_ids + pending_ids  # as they were announced

    seen: list[dict[str, Any]] = []
    params: dict[str, str] = {"limit": "2"}
    while True:
        r = await client.get(url, params=params, headers=tenant.headers)
        assert r.status == 200, await r.text()
        page = await r.json()
        assert len(page["data"]) <= 2
        seen += page["data"]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        params["cursor"] = page["next_cursor"]
    # oldest first, each once, the attachment objects of GET (without a download URL)
    assert [x["id"] for x in seen] == in_order
    for x in seen:
        got = await fetch(client, tenant, sid, x["id"])
        assert x == {k: v for k, v in got.items() if k != "download_url"}
    assert [x["message_id"] is not None for x in seen] == [False, True, False, False, False]

    for status, expected in (("ready", ready_ids), ("pending", pending_ids)):
        r = await client.get(url, params={"status": status}, headers=tenant.headers)
        page = await r.json()
        assert sorted(x["id"] for x in page["data"]) == sorted(expected)
        assert {x["status"] for x in page["data"]} == {status}

    # a cursor belongs to its list: another status filter refuses it
    r = await client.get(url, params={"limit": "1"}, headers=tenant.headers)
    cursor = (await r.json())["next_cursor"]
    r = await client.get(url, params={"cursor": cursor, "status": "ready"},
                         headers=tenant.headers)
    assert (await error_of(r, 400))["errors"][0]["field"] == "cursor"
    r = await client.get(url, params={"status": "gone"}, headers=tenant.headers)
    await error_of(r, 400)

    # another tenant's session, or none, is 404
    r = await client.get(url, headers=other_tenant.headers)
    await error_of(r, 404)
    r = await client.get(f"/api/v1/sessions/{uuid.uuid4()}/attachments", headers=tenant.headers)
    await error_of(r, 404)


async def test_a_history_page_of_50_messages_is_one_query(
    client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    sid = await new_session(client, tenant)
    # ready attachments made straight in the database: two per message, linked by a batch
    async with pool.acquire() as conn:
        ids = [uuid.uuid4() for _ in range(100)]
        await conn.executemany(
            "INSERT INTO attachments (id, tenant_id, session_id, name, mime, size, sha256, "
            "object_key, status) VALUES ($1, $2, $3, $4, 'text/plain', 1, $5, $6, 'ready')",
            [(i, tenant.id, uuid.UUID(sid), f"f{n}.txt",
              hashlib.sha256(b"x").hexdigest(), f"k/{i}") for n, i in enumerate(ids)])
    body = {"messages": [{"role": "user", "content": f"m{n}",
                          "attachment_ids": [str(ids[2 * n + 1]), str(ids[2 * n])]}
                         for n in range(50)]}
    r = await client.post(f"/api/v1/sessions/{sid}/messages/batch", json=body,
                          headers=tenant.headers)
    assert r.status == 201, await r.text()

    statements: list[str] = []

    def log(record: Any) -> None:
        statements.append(record.query)

    async with pool.acquire() as conn:
        conn.add_query_logger(log)
        try:
            page = await history.history(conn, tenant.id, uuid.UUID(sid), limit=50)
        finally:
            conn.remove_query_logger(log)
    assert len(page) == 50
    assert len(statements) == 1, statements
    for n, message in enumerate(page):
        assert [x["name"] for x in message["attachments"]] == [f"f{2 * n + 1}.txt",
                                                               f"f{2 * n}.txt"]
    # and the same over HTTP
    served = await history_page(client, tenant, sid, limit=50)
    assert [[x["id"] for x in m["attachments"]] for m in served["data"]] == [
        [str(ids[2 * n + 1]), str(ids[2 * n])] for n in range(50)]


async def test_exports_agree_with_the_messages(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    a, b = await named(client, tenant, sid, "a.txt"), await named(client, tenant, sid, "b.txt")
    message = await add(client, tenant, sid, attachment_ids=[b["id"], a["id"]])
    r = await client.get(f"/api/v1/sessions/{sid}/export", headers=tenant.headers)
    assert r.status == 200
    exported = await r.json()
    assert exported["messages"] == [message]
    # each listed attachment is the message's, described the same way
    described = {x["id"]: x for x in exported["attachments"]}
    assert [linked(described[x["id"]]) for x in message["attachments"]] == \
        message["attachments"]
    assert {x["message_id"] for x in exported["attachments"]} == {message["id"]}
    r = await client.get(f"/api/v1/sessions/{sid}/attachments", headers=tenant.headers)
    assert (await r.json())["data"] == exported["attachments"]
