"""Session calls through the real server: list, update, favorite, delete, user erasure."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from chat_storage.storage.audit_log import audit_records
from tests.conftest import Tenant

SESSIONS = "/api/v1/sessions"


async def new_session(client: Any, tenant: Tenant, user_id: str = "u1", **fields: Any
                      ) -> dict[str, Any]:
    r = await client.post(SESSIONS, json={"user_id": user_id, **fields}, headers=tenant.headers)
    assert r.status == 201, await r.text()
    return dict(await r.json())


async def add_messages(client: Any, tenant: Tenant, session_id: str, n: int) -> None:
    """Store ``n`` messages through the batch endpoint (500 per request)."""
    done = 0
    while done < n:
        count = min(500, n - done)
        batch = [{"role": "user" if (done + i) % 2 == 0 else "assistant",
                  "content": f"message {done + i + 1}"} for i in range(count)]
        r = await client.post(f"{SESSIONS}/{session_id}/messages/batch",
                              json={"messages": batch}, headers=tenant.headers)
        assert r.status == 201, await r.text()
        done += count


async def list_all(client: Any, tenant: Tenant, **params: Any) -> list[dict[str, Any]]:
    """Every session of a list, page by page (bounded)."""
    found: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        r = await client.get(SESSIONS, params=query, headers=tenant.headers)
        assert r.status == 200, await r.text()
        page = await r.json()
        found.extend(page["data"])
        assert page["has_more"] == (page["next_cursor"] is not None)
        if not page["has_more"]:
            return found
        cursor = page["next_cursor"]
    raise AssertionError("list did not end")


def ids(sessions: list[dict[str, Any]]) -> list[str]:
    return [s["id"] for s in sessions]


# ---------------------------------------------------------------- list

async def test_list_newest_activity_first_in_pages(client: Any, tenant: Tenant) -> None:
    created = [await new_session(client, tenant, title=f"s{i}") for i in range(7)]
    newest_first = ids(created)[::-1]
    assert ids(await list_all(client, tenant, limit=3)) == newest_first
    # a new message makes the oldest session the most recently active
    await add_messages(client, tenant, created[0]["id"], 1)
    listed = await list_all(client, tenant, limit=2)
    assert ids(listed) == [created[0]["id"], *newest_first[:-1]]
    assert listed[0]["message_count"] == 1
    assert listed[0]["last_message_at"] is not None


async def test_pages_neither_skip_nor_repeat_under_inserts(client: Any, tenant: Tenant) -> None:
    before = [await new_session(client, tenant) for _ in range(6)]
    r = await client.get(SESSIONS, params={"limit": 2}, headers=tenant.headers)
    first = await r.json()
    assert len(first["data"]) == 2 and first["has_more"]
    # sessions created meanwhile land before the cursor: not seen, nothing shifts
    for _ in range(3):
        await new_session(client, tenant)
    seen = ids(first["data"])
    cursor = first["next_cursor"]
    for _ in range(10):
        r = await client.get(SESSIONS, params={"limit": 2, "cursor": cursor},
                             headers=tenant.headers)
        assert r.status == 200, await r.text()
        page = await r.json()
        seen.extend(ids(page["data"]))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids(before)[::-1]


async def test_list_filters(client: Any, tenant: Tenant) -> None:
    a = await new_session(client, tenant, "alice", title="Trip to ROME")
    b = await new_session(client, tenant, "alice", title="Budget 100% done")
    c = await new_session(client, tenant, "bob", title="rome_notes")
    d = await new_session(client, tenant, "bob", title="romeXnotes")
    r = await client.put(f"{SESSIONS}/{b['id']}/favorite", headers=tenant.headers)
    assert r.status == 200
    assert set(ids(await list_all(client, tenant, user_id="alice"))) == {a["id"], b["id"]}
    assert ids(await list_all(client, tenant, favorite="true")) == [b["id"]]
    assert set(ids(await list_all(client, tenant, favorite="false"))) == {a["id"], c["id"], d["id"]}
    assert set(ids(await list_all(client, tenant, q="rome"))) == {a["id"], c["id"], d["id"]}
    assert ids(await list_all(client, tenant, q="Rome", user_id="alice")) == [a["id"]]
    # LIKE wildcards in q are literal characters
    assert ids(await list_all(client, tenant, q="e_n")) == [c["id"]]
    assert ids(await list_all(client, tenant, q="0%")) == [b["id"]]
    assert ids(await list_all(client, tenant, q="%")) == [b["id"]]
    assert await list_all(client, tenant, user_id="nobody") == []


async def test_list_filters_apply_across_pages(client: Any, tenant: Tenant) -> None:
    mine = [await new_session(client, tenant, "carol", title=f"plan {i}") for i in range(5)]
    for _ in range(3):
        await new_session(client, tenant, "dave", title="plan")
    assert ids(await list_all(client, tenant, user_id="carol", q="PLAN", limit=2)) == \
        ids(mine)[::-1]


async def test_list_only_shows_own_tenant(client: Any, tenant: Tenant,
                                          other_tenant: Tenant) -> None:
    mine = await new_session(client, tenant)
    await new_session(client, other_tenant)
    assert ids(await list_all(client, tenant)) == [mine["id"]]


async def test_bad_cursors_are_rejected(client: Any, tenant: Tenant,
                                        other_tenant: Tenant) -> None:
    for _ in range(3):
        await new_session(client, tenant, "u1")
        await new_session(client, other_tenant, "u1")
    r = await client.get(SESSIONS, params={"limit": 1, "user_id": "u1"}, headers=tenant.headers)
    cursor = (await r.json())["next_cursor"]
    assert cursor
    cases: list[tuple[Tenant, dict[str, Any]]] = [
        (tenant, {"cursor": "not-a-cursor"}),
        (tenant, {"cursor": cursor[:-4]}),
        (tenant, {"cursor": cursor}),  # another filter set (no user_id)
        (tenant, {"cursor": cursor, "user_id": "u1", "favorite": "false"}),
        (other_tenant, {"cursor": cursor, "user_id": "u1"}),  # another tenant
    ]
    for who, params in cases:
        r = await client.get(SESSIONS, params={"limit": 1, **params}, headers=who.headers)
        assert r.status == 400, (params, await r.text())
        body = await r.json()
        assert body["errors"][0]["field"] == "cursor"
    r = await client.get(SESSIONS, params={"limit": 1, "user_id": "u1", "cursor": cursor},
                         headers=tenant.headers)
    assert r.status == 200


async def test_list_query_validation(client: Any, tenant: Tenant) -> None:
    for params, field in [({"limit": "0"}, "limit"), ({"limit": "201"}, "limit"),
                          ({"limit": "many"}, "limit"), ({"favorite": "maybe"}, "favorite"),
                          ({"q": ""}, "q"), ({"user_id": "x" * 129}, "user_id"),
                          ({"user_id": "a\x00b"}, "user_id")]:
        r = await client.get(SESSIONS, params=params, headers=tenant.headers)
        assert r.status == 400, (params, await r.text())
        body = await r.json()
        assert body["status"] == 400 and body["request_id"]
        assert [e["field"] for e in body["errors"]] == [field], body
    r = await client.get(SESSIONS, params={"limit": "200"}, headers=tenant.headers)
    assert r.status == 200


# ---------------------------------------------------------------- update and favorite

async def test_patch_changes_only_given_fields(client: Any, tenant: Tenant) -> None:
    s = await new_session(client, tenant, title="old", metadata={"a": 1})
    url = f"{SESSIONS}/{s['id']}"
    r = await client.patch(url, json={"title": "new"}, headers=tenant.headers)
    assert r.status == 200, await r.text()
    renamed = await r.json()
    assert (renamed["title"], renamed["metadata"], renamed["favorite"]) == ("new", {"a": 1}, False)
    assert renamed["updated_at"] > s["updated_at"]
    r = await client.patch(url, json={"metadata": {"b": [1, 2]}, "favorite": True,
                                      "ttl_s": 3600}, headers=tenant.headers)
    changed = await r.json()
    assert changed["metadata"] == {"b": [1, 2]} and changed["favorite"] is True
    assert changed["title"] == "new" and changed["expires_at"] is not None
    r = await client.patch(url, json={"ttl_s": None}, headers=tenant.headers)
    assert (await r.json())["expires_at"] is None
    r = await client.get(url, headers=tenant.headers)
    stored = await r.json()
    assert (stored["title"], stored["favorite"], stored["expires_at"]) == ("new", True, None)


async def test_empty_patch_answers_session_unchanged(client: Any, tenant: Tenant) -> None:
    s = await new_session(client, tenant, title="same")
    r = await client.patch(f"{SESSIONS}/{s['id']}", json={}, headers=tenant.headers)
    assert r.status == 200
    assert await r.json() == s


async def test_patch_validation(client: Any, tenant: Tenant) -> None:
    s = await new_session(client, tenant)
    url = f"{SESSIONS}/{s['id']}"
    cases: list[tuple[Any, list[str]]] = [
        ({"title": "x" * 201}, ["title"]),
        ({"title": None}, ["title"]),
        ({"favorite": None, "metadata": None}, ["favorite", "metadata"]),
        ({"favorite": "yes please"}, ["favorite"]),
        ({"ttl_s": 0}, ["ttl_s"]),
        ({"metadata": {"big": "x" * 17_000}}, ["metadata"]),
        ({"user_id": "someone-else"}, ["user_id"]),  # no mass assignment
        ({"message_count": 0}, ["message_count"]),
    ]
    for body, fields in cases:
        r = await client.patch(url, json=body, headers=tenant.headers)
        assert r.status == 400, (body, await r.text())
        err = await r.json()
        assert sorted(e["field"] for e in err["errors"]) == fields, err
    r = await client.patch(url, json={"user_id": "x"}, headers=tenant.headers)
    assert (await r.json())["errors"][0]["message"] == "unknown field"
    r = await client.patch(url, data=b"title=x", headers={
        **tenant.headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 415
    r = await client.get(url, headers=tenant.headers)
    assert await r.json() == s


async def test_favorite_flow(client: Any, tenant: Tenant) -> None:
    s = await new_session(client, tenant)
    url = f"{SESSIONS}/{s['id']}/favorite"
    for _ in range(2):  # idempotent
        r = await client.put(url, headers=tenant.headers)
        assert r.status == 200
        assert (await r.json())["favorite"] is True
    assert ids(await list_all(client, tenant, favorite="true")) == [s["id"]]
    r = await client.delete(url, headers=tenant.headers)
    assert r.status == 200
    assert (await r.json())["favorite"] is False
    assert await list_all(client, tenant, favorite="true") == []
    r = await client.delete(url, headers=tenant.headers)
    assert r.status == 200


# ---------------------------------------------------------------- tenancy

async def test_another_tenants_session_is_not_found(client: Any, tenant: Tenant,
                                                    other_tenant: Tenant) -> None:
    s = await new_session(client, tenant, title="private")
    url = f"{SESSIONS}/{s['id']}"
    calls = [("GET", url, None), ("PATCH", url, {"title": "mine now"}),
             ("PUT", url + "/favorite", None), ("DELETE", url + "/favorite", None),
             ("GET", url + "/export", None), ("GET", url + "/export?format=markdown", None),
             ("DELETE", url, None)]
    for method, path, body in calls:
        r = await client.request(method, path, json=body, headers=other_tenant.headers)
        assert r.status == 404, (method, path, await r.text())
        assert (await r.json())["message"] == "session not found"
        missing = path.replace(s["id"], str(uuid.uuid4()))
        r = await client.request(method, missing, json=body, headers=tenant.headers)
        assert r.status == 404, (method, missing)
        r = await client.request(method, path.replace(s["id"], "not-a-uuid"), json=body,
                                 headers=tenant.headers)
        assert r.status == 404
    r = await client.get(url, headers=tenant.headers)
    assert await r.json() == s


# ---------------------------------------------------------------- delete

async def test_delete_removes_messages_attachments_and_is_audited(
    client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    s = await new_session(client, tenant)
    keep = await new_session(client, tenant)
    await add_messages(client, tenant, s["id"], 5)
    await add_messages(client, tenant, keep["id"], 2)
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO attachments (id, tenant_id, session_id, name, mime, size, sha256, "
            "object_key) VALUES ($1, $2, $3, 'a.txt', 'text/plain', 1, 'x', 'k/a.txt')",
            uuid.uuid4(), tenant.id, uuid.UUID(s["id"]),
        )
    r = await client.delete(f"{SESSIONS}/{s['id']}",
                            headers={**tenant.headers, "X-Request-ID": "req-delete-1"})
    assert r.status == 204
    assert r.headers["X-Request-ID"] == "req-delete-1"
    r = await client.get(f"{SESSIONS}/{s['id']}", headers=tenant.headers)
    assert r.status == 404
    r = await client.delete(f"{SESSIONS}/{s['id']}", headers=tenant.headers)
    assert r.status == 404
    async with pool.acquire() as conn:
        sid = uuid.UUID(s["id"])
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE session_id = $1",
                                   sid) == 0
        assert await conn.fetchval("SELECT count(*) FROM attachments WHERE session_id = $1",
                                   sid) == 0
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE session_id = $1",
                                   uuid.UUID(keep["id"])) == 2
        records = await audit_records(conn, tenant.id)
    deletes = [a for a in records if a["action"] == "session.delete"]
    assert len(deletes) == 1
    assert deletes[0]["target"] == s["id"]
    assert deletes[0]["request_id"] == "req-delete-1"
    assert deletes[0]["actor"] == f"key:{tenant.key_id}"
    assert deletes[0]["details"] == {"messages": 5}


async def test_write_to_deleted_session_is_not_found(client: Any, tenant: Tenant) -> None:
    s = await new_session(client, tenant)
    url = f"{SESSIONS}/{s['id']}/messages"
    # the first write starts the session's actor; it must not outlive the session
    r = await client.post(url, json={"role": "user", "content": "hi"}, headers=tenant.headers)
    assert r.status == 201
    r = await client.delete(f"{SESSIONS}/{s['id']}", headers=tenant.headers)
    assert r.status == 204
    r = await client.post(url, json={"role": "user", "content": "again"}, headers=tenant.headers)
    assert r.status == 404, await r.text()
    r = await client.post(url + "/batch", json={"messages": [{"role": "user", "content": "x"}]},
                          headers=tenant.headers)
    assert r.status == 404


# ---------------------------------------------------------------- user erasure

async def test_erase_user_touches_only_that_user_and_tenant(
    client: Any, tenant: Tenant, other_tenant: Tenant, pool: asyncpg.Pool
) -> None:
    gone = [await new_session(client, tenant, "erin") for _ in range(2)]
    await add_messages(client, tenant, gone[0]["id"], 3)
    await add_messages(client, tenant, gone[1]["id"], 4)
    other_user = await new_session(client, tenant, "frank")
    await add_messages(client, tenant, other_user["id"], 2)
    other_tenant_same_user = await new_session(client, other_tenant, "erin")
    await add_messages(client, other_tenant, other_tenant_same_user["id"], 2)

    r = await client.delete("/api/v1/users/erin/sessions",
                            headers={**tenant.headers, "X-Request-ID": "req-erase-1"})
    assert r.status == 204, await r.text()

    assert await list_all(client, tenant, user_id="erin") == []
    assert ids(await list_all(client, tenant)) == [other_user["id"]]
    assert ids(await list_all(client, other_tenant)) == [other_tenant_same_user["id"]]
    r = await client.post(f"{SESSIONS}/{gone[0]['id']}/messages",
                          json={"role": "user", "content": "still there?"},
                          headers=tenant.headers)
    assert r.status == 404
    async with pool.acquire() as conn:
        assert await conn.fetchval(
            "SELECT count(*) FROM messages WHERE session_id = ANY($1::uuid[])",
            [uuid.UUID(s["id"]) for s in gone]) == 0
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE tenant_id = $1",
                                   tenant.id) == 2
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE tenant_id = $1",
                                   other_tenant.id) == 2
        records = await audit_records(conn, tenant.id)
        assert [a for a in await audit_records(conn, other_tenant.id)
                if a["action"] == "user.erase"] == []
    erasures = [a for a in records if a["action"] == "user.erase"]
    assert len(erasures) == 1
    assert erasures[0]["target"] == "user:erin"
    assert erasures[0]["details"] == {"sessions": 2, "messages": 7, "data_keys_destroyed": 0}
    assert erasures[0]["request_id"] == "req-erase-1"


async def test_erase_user_forgets_idempotent_replies(client: Any, tenant: Tenant) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "create-gina-1"}
    body = {"user_id": "gina", "title": "secret plans"}
    r = await client.post(SESSIONS, json=body, headers=headers)
    assert r.status == 201
    first = await r.json()
    r = await client.post(SESSIONS, json=body, headers=headers)
    assert r.headers.get("Idempotent-Replayed") == "true"
    message_url = f"{SESSIONS}/{first['id']}/messages"
    message_headers = {**tenant.headers, "Idempotency-Key": "message-gina-1"}
    message = {"role": "user", "content": "my secret"}
    r = await client.post(message_url, json=message, headers=message_headers)
    assert r.status == 201
    r = await client.delete("/api/v1/users/gina/sessions", headers=tenant.headers)
    assert r.status == 204
    # the stored replies held the erased title and content: they are gone, so the
    # requests run anew instead of being replayed
    r = await client.post(message_url, json=message, headers=message_headers)
    assert r.status == 404
    r = await client.post(SESSIONS, json=body, headers=headers)
    assert r.status == 201
    assert "Idempotent-Replayed" not in r.headers
    assert (await r.json())["id"] != first["id"]


async def test_erase_user_validation_and_nothing_to_erase(client: Any, tenant: Tenant) -> None:
    r = await client.delete("/api/v1/users/nobody-here/sessions", headers=tenant.headers)
    assert r.status == 204
    r = await client.delete(f"/api/v1/users/{'x' * 129}/sessions", headers=tenant.headers)
    assert r.status == 400
    assert (await r.json())["errors"][0]["field"] == "user_id"
    r = await client.delete("/api/v1/users/u1/sessions")
    assert r.status == 401
