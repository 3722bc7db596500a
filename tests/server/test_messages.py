"""Messages over HTTP: create, batch, history (pages, branches), one, edit, tombstone."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from chat_storage.storage import audit_log
from tests.conftest import Tenant


async def new_session(client: Any, tenant: Tenant, user_id: str = "u1") -> str:
    r = await client.post("/api/v1/sessions", json={"user_id": user_id}, headers=tenant.headers)
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])


async def add(client: Any, tenant: Tenant, sid: str, **body: Any) -> dict[str, Any]:
    body.setdefault("role", "user")
    body.setdefault("content", "hello")
    r = await client.post(f"/api/v1/sessions/{sid}/messages", json=body, headers=tenant.headers)
    assert r.status == 201, await r.text()
    return dict(await r.json())


async def add_many(client: Any, tenant: Tenant, sid: str, n: int) -> list[dict[str, Any]]:
    batch = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"}
             for i in range(n)]
    r = await client.post(f"/api/v1/sessions/{sid}/messages/batch", json={"messages": batch},
                          headers=tenant.headers)
    assert r.status == 201, await r.text()
    return list((await r.json())["data"])


async def history(client: Any, tenant: Tenant, sid: str, **query: Any) -> Any:
    r = await client.get(f"/api/v1/sessions/{sid}/messages",
                         params={k: str(v) for k, v in query.items()}, headers=tenant.headers)
    assert r.status == 200, await r.text()
    return await r.json()


async def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body = dict(await response.json())
    assert body["status"] == status
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


# ---------------------------------------------------------------- create and batch

async def test_create_validation_errors(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    url = f"/api/v1/sessions/{sid}/messages"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"role": "robot", "content": "x"}, "role"),
        ({"content": "x"}, "role"),
        ({"role": "user", "content": "x", "seq": 5}, "seq"),
        ({"role": "user", "content": "x", "parent_id": "nope"}, "parent_id"),
        ({"role": "user", "content": "x", "parent_id": str(uuid.uuid4())}, "parent_id"),
        ({"role": "user", "content": "x" * (256 * 1024 + 1)}, "content"),
    ]
    for body, field in cases:
        body_err = await error_of(await client.post(url, json=body, headers=tenant.headers), 400)
        assert field in fields(body_err), body_err
    r = await client.post(url, data=b"{}", headers={**tenant.headers,
                                                    "Content-Type": "text/plain"})
    await error_of(r, 415)
    assert (await history(client, tenant, sid))["data"] == []


async def test_unknown_or_foreign_session_is_404(
    client: Any, tenant: Tenant, other_tenant: Tenant
) -> None:
    sid = await new_session(client, tenant)
    await add(client, tenant, sid)
    for url in (f"/api/v1/sessions/{sid}/messages", f"/api/v1/sessions/{uuid.uuid4()}/messages",
                "/api/v1/sessions/not-a-uuid/messages"):
        await error_of(await client.get(url, headers=other_tenant.headers), 404)
        r = await client.post(url, json={"role": "user", "content": "x"},
                              headers=other_tenant.headers)
        await error_of(r, 404)
    assert [m["seq"] for m in (await history(client, tenant, sid))["data"]] == [1]


async def test_batch_is_all_or_nothing_with_consecutive_seq(
    client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    sid = await new_session(client, tenant)
    first = await add(client, tenant, sid, content="first")
    bad = {"messages": [
        {"role": "user", "content": "a", "parent_id": first["id"]},
        {"role": "assistant", "content": "b", "parent_id": str(uuid.uuid4())},
        {"role": "user", "content": "c"},
    ]}
    url = f"/api/v1/sessions/{sid}/messages/batch"
    body = await error_of(await client.post(url, json=bad, headers=tenant.headers), 400)
    assert fields(body) == {"messages.1.parent_id"}
    invalid = {"messages": [{"role": "user", "content": "a"}, {"role": "nobody", "content": "b"}]}
    body = await error_of(await client.post(url, json=invalid, headers=tenant.headers), 400)
    assert fields(body) == {"messages.1.role"}
    await error_of(await client.post(url, json={"messages": []}, headers=tenant.headers), 400)
    count = await pool.fetchval("SELECT count(*) FROM messages WHERE session_id = $1",
                                uuid.UUID(sid))
    assert count == 1

    stored = await add_many(client, tenant, sid, 5)
    assert [m["seq"] for m in stored] == [2, 3, 4, 5, 6]
    assert [m["content"] for m in stored] == ["m0", "m1", "m2", "m3", "m4"]
    r = await client.get(f"/api/v1/sessions/{sid}", headers=tenant.headers)
    session = await r.json()
    assert (session["last_seq"], session["message_count"]) == (6, 6)


async def test_200_concurrent_writers_get_seq_1_to_200(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    url = f"/api/v1/sessions/{sid}/messages"
    responses = await asyncio.gather(*(
        client.post(url, json={"role": "user", "content": f"w{i}"}, headers=tenant.headers)
        for i in range(200)
    ))
    assert [r.status for r in responses] == [201] * 200
    answered = sorted([(await r.json())["seq"] for r in responses])
    assert answered == list(range(1, 201))
    page = await history(client, tenant, sid, limit=200)
    assert [m["seq"] for m in page["data"]] == list(range(1, 201))
    assert sorted(m["content"] for m in page["data"]) == sorted(f"w{i}" for i in range(200))
    assert page["has_more"] is False


# ---------------------------------------------------------------- history pages

async def test_history_filters_order_and_pages(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    await add_many(client, tenant, sid, 12)
    page = await history(client, tenant, sid)
    assert [m["seq"] for m in page["data"]] == list(range(1, 13))
    assert (page["has_more"], page["next_cursor"]) == (False, None)
    page = await history(client, tenant, sid, order="desc", limit=3)
    assert [m["seq"] for m in page["data"]] == [12, 11, 10]
    page = await history(client, tenant, sid, order="desc", limit=3, cursor=page["next_cursor"])
    assert [m["seq"] for m in page["data"]] == [9, 8, 7]
    page = await history(client, tenant, sid, after_seq=3, before_seq=9, limit=4)
    assert [m["seq"] for m in page["data"]] == [4, 5, 6, 7]
    assert page["has_more"] is True
    page = await history(client, tenant, sid, after_seq=3, before_seq=9, limit=4,
                         cursor=page["next_cursor"])
    assert [m["seq"] for m in page["data"]] == [8]
    assert (page["has_more"], page["next_cursor"]) == (False, None)
    page = await history(client, tenant, sid, after_seq=9, before_seq=3)
    assert page["data"] == []


async def test_history_query_errors(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    other = await new_session(client, tenant)
    await add_many(client, tenant, sid, 4)
    await add_many(client, tenant, other, 4)
    url = f"/api/v1/sessions/{sid}/messages"
    first = await history(client, tenant, sid, limit=2)
    cursor = first["next_cursor"]
    cases: list[tuple[str, str]] = [
        ("limit=0", "limit"), ("limit=201", "limit"), ("limit=x", "limit"),
        ("order=up", "order"), ("after_seq=-1", "after_seq"), ("before_seq=0", "before_seq"),
        ("leaf=123", "leaf"), ("cursor=%%%", "cursor"), ("cursor=abc", "cursor"),
        ("limit=2&limit=3", "limit"),
        # a real cursor used with other filters, or for another session's list
        (f"cursor={cursor}&order=desc", "cursor"),
        (f"cursor={cursor}&after_seq=1", "cursor"),
    ]
    for query, field in cases:
        body = await error_of(await client.get(f"{url}?{query}", headers=tenant.headers), 400)
        assert field in fields(body), (query, body)
    r = await client.get(f"/api/v1/sessions/{other}/messages?cursor={cursor}&limit=2",
                         headers=tenant.headers)
    assert "cursor" in fields(await error_of(r, 400))


async def test_pages_are_stable_under_concurrent_inserts(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    await add_many(client, tenant, sid, 30)
    inserted = asyncio.Event()
    stop = asyncio.Event()

    async def writer() -> int:
        n = 0
        while not stop.is_set() and n < 40:
            await add(client, tenant, sid, content=f"late{n}")
            n += 1
            inserted.set()
        return n

    async def next_insert() -> None:
        inserted.clear()
        if not writer_task.done():
            await asyncio.wait({asyncio.ensure_future(inserted.wait()), writer_task},
                               return_when=asyncio.FIRST_COMPLETED)

    writer_task = asyncio.create_task(writer())
    try:
        # newest first: starts at the top seen on the first page, never sees later ones
        seen_desc: list[int] = []
        page = await history(client, tenant, sid, order="desc", limit=7)
        for _ in range(50):
            seen_desc += [m["seq"] for m in page["data"]]
            if not page["has_more"]:
                break
            await next_insert()
            page = await history(client, tenant, sid, order="desc", limit=7,
                                 cursor=page["next_cursor"])
        assert seen_desc == list(range(seen_desc[0], 0, -1))
        assert seen_desc[0] >= 30

        # oldest first: follows the inserts to the end, each message once
        seen_asc: list[int] = []
        page = await history(client, tenant, sid, limit=7)
        for _ in range(100):
            seen_asc += [m["seq"] for m in page["data"]]
            if not page["has_more"]:
                if writer_task.done():
                    break
                await next_insert()
                page = await history(client, tenant, sid, limit=7, after_seq=seen_asc[-1])
                continue
            await next_insert()
            page = await history(client, tenant, sid, limit=7, cursor=page["next_cursor"])
    finally:
        stop.set()
        written = await writer_task
    page = await history(client, tenant, sid, limit=7, after_seq=seen_asc[-1])
    seen_asc += [m["seq"] for m in page["data"]]
    assert seen_asc == list(range(1, 31 + written))


# ---------------------------------------------------------------- branches

async def test_leaf_walks_one_branch(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    q1 = await add(client, tenant, sid, role="user", content="Q1")
    a1 = await add(client, tenant, sid, role="assistant", content="A1")
    q2 = await add(client, tenant, sid, role="user", content="Q2")
    a2 = await add(client, tenant, sid, role="assistant", content="A2")
    # the user edits Q2: the edited question follows A1
    q2_edit = await add(client, tenant, sid, role="user", content="Q2 edited", parent_id=a1["id"])
    a2_edit = await add(client, tenant, sid, role="assistant", content="A2 for edit")
    # then regenerates the answer to the original Q2
    a2_regen = await add(client, tenant, sid, role="assistant", content="A2 again",
                         parent_id=q2["id"])

    async def branch(leaf: dict[str, Any], **query: Any) -> list[str]:
        page = await history(client, tenant, sid, leaf=leaf["id"], **query)
        return [m["content"] for m in page["data"]]

    assert await branch(a2_edit) == ["Q1", "A1", "Q2 edited", "A2 for edit"]
    assert await branch(a2) == ["Q1", "A1", "Q2", "A2"]
    assert await branch(a2_regen) == ["Q1", "A1", "Q2", "A2 again"]
    assert await branch(q2_edit) == ["Q1", "A1", "Q2 edited"]
    assert await branch(q1) == ["Q1"]
    assert await branch(a2_edit, order="desc") == ["A2 for edit", "Q2 edited", "A1", "Q1"]
    assert await branch(a2_regen, after_seq=1, before_seq=7) == ["A1", "Q2"]
    # the whole session still has all seven, in seq order
    assert len((await history(client, tenant, sid))["data"]) == 7

    page = await history(client, tenant, sid, leaf=a2_edit["id"], limit=3)
    assert [m["seq"] for m in page["data"]] == [1, 2, 5]
    page = await history(client, tenant, sid, leaf=a2_edit["id"], limit=3,
                         cursor=page["next_cursor"])
    assert [m["seq"] for m in page["data"]] == [6]
    assert page["has_more"] is False
    # a cursor of one branch is not valid for another
    first = await history(client, tenant, sid, leaf=a2["id"], limit=2)
    r = await client.get(f"/api/v1/sessions/{sid}/messages",
                         params={"leaf": a2_regen["id"], "cursor": first["next_cursor"]},
                         headers=tenant.headers)
    assert "cursor" in fields(await error_of(r, 400))


async def test_unknown_leaf_is_400(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    other = await new_session(client, tenant)
    foreign = await add(client, tenant, other)
    await add(client, tenant, sid)
    for leaf in (str(uuid.uuid4()), foreign["id"]):
        r = await client.get(f"/api/v1/sessions/{sid}/messages", params={"leaf": leaf},
                             headers=tenant.headers)
        body = await error_of(r, 400)
        assert body["errors"] == [{"field": "leaf", "message": "is not a message of this session"}]
    r = await client.get(f"/api/v1/sessions/{uuid.uuid4()}/messages",
                         params={"leaf": foreign["id"]}, headers=tenant.headers)
    await error_of(r, 404)


# ---------------------------------------------------------------- one message

async def test_get_one_message(client: Any, tenant: Tenant, other_tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    msg = await add(client, tenant, sid, role="assistant", content="answer",
                    context=[{"source_id": "doc-1", "score": 0.5}], usage={"total_tokens": 3})
    url = f"/api/v1/sessions/{sid}/messages/{msg['id']}"
    r = await client.get(url, headers=tenant.headers)
    assert r.status == 200
    assert await r.json() == msg
    await error_of(await client.get(url, headers=other_tenant.headers), 404)
    other = await new_session(client, tenant)
    r = await client.get(f"/api/v1/sessions/{other}/messages/{msg['id']}", headers=tenant.headers)
    await error_of(r, 404)
    r = await client.get(f"/api/v1/sessions/{sid}/messages/xyz", headers=tenant.headers)
    await error_of(r, 404)


async def test_patch_metadata_and_feedback(
    client: Any, tenant: Tenant, other_tenant: Tenant
) -> None:
    sid = await new_session(client, tenant)
    msg = await add(client, tenant, sid, role="assistant", content="answer", metadata={"a": 1})
    url = f"/api/v1/sessions/{sid}/messages/{msg['id']}"

    async def patch(body: Any, who: Tenant = tenant) -> Any:
        return await client.patch(url, json=body, headers=who.headers)

    r = await patch({"feedback": {"rating": 1, "comment": "great"}})
    assert r.status == 200, await r.text()
    assert (await r.json())["feedback"] == {"rating": 1, "comment": "great"}
    r = await patch({"metadata": {"b": 2}})
    changed = await r.json()
    assert changed["metadata"] == {"b": 2}
    assert changed["feedback"] == {"rating": 1, "comment": "great"}  # absent: unchanged
    assert changed["content"] == "answer"
    r = await patch({})
    assert r.status == 200
    assert await r.json() == changed
    r = await patch({"feedback": None})
    assert (await r.json())["feedback"] is None

    errors: list[tuple[Any, str]] = [
        ({"content": "rewritten"}, "content"),
        ({"feedback": {"rating": 5}}, "feedback.rating"),
        ({"feedback": {"rating": 1, "extra": True}}, "feedback.extra"),
        ({"metadata": "text"}, "metadata"),
        ({"metadata": {"k": "x" * 17000}}, "metadata"),
    ]
    for body, field in errors:
        err = await error_of(await patch(body), 400)
        assert field in fields(err), (body, err)
    await error_of(await patch([1, 2]), 400)
    await error_of(await patch({"metadata": {}}, other_tenant), 404)
    r = await client.get(url, headers=tenant.headers)
    assert (await r.json())["content"] == "answer"


async def test_delete_leaves_an_audited_tombstone(
    client: Any, tenant: Tenant, other_tenant: Tenant, pool: asyncpg.Pool
) -> None:
    sid = await new_session(client, tenant)
    await add(client, tenant, sid, content="q")
    secret = await add(client, tenant, sid, role="assistant", content="a secret answer",
                       context=[{"source_id": "s"}], metadata={"k": "v"})
    await add(client, tenant, sid, content="next")
    url = f"/api/v1/sessions/{sid}/messages/{secret['id']}"
    await client.patch(url, json={"feedback": {"rating": -1}}, headers=tenant.headers)

    await error_of(await client.delete(url, headers=other_tenant.headers), 404)
    r = await client.delete(url, headers={**tenant.headers, "X-Request-ID": "del-req-1"})
    assert r.status == 204
    r = await client.get(url, headers=tenant.headers)
    gone = await r.json()
    assert gone["status"] == "deleted"
    assert gone["seq"] == 2
    assert (gone["content"], gone["context"], gone["metadata"], gone["feedback"]) == (
        "", None, {}, None)
    page = await history(client, tenant, sid)
    assert [(m["seq"], m["status"]) for m in page["data"]] == [
        (1, "complete"), (2, "deleted"), (3, "complete")]
    r = await client.get(f"/api/v1/sessions/{sid}", headers=tenant.headers)
    assert (await r.json())["message_count"] == 2

    async with pool.acquire() as conn:
        records = await audit_log.audit_records(conn, tenant.id)
        stored = await conn.fetchval("SELECT content FROM messages WHERE id = $1",
                                     uuid.UUID(secret["id"]))
    deletes = [a for a in records if a["action"] == "message.delete"]
    assert len(deletes) == 1
    assert deletes[0]["target"] == secret["id"]
    assert deletes[0]["request_id"] == "del-req-1"
    assert deletes[0]["actor"] == f"key:{tenant.key_id}"
    assert stored == ""

    # deleting again is a no-op; a tombstone cannot be edited
    assert (await client.delete(url, headers=tenant.headers)).status == 204
    r = await client.get(f"/api/v1/sessions/{sid}", headers=tenant.headers)
    assert (await r.json())["message_count"] == 2
    r = await client.patch(url, json={"feedback": {"rating": 1}}, headers=tenant.headers)
    await error_of(r, 409)
    await error_of(await client.patch(url, json={}, headers=tenant.headers), 409)
    missing = f"/api/v1/sessions/{sid}/messages/{uuid.uuid4()}"
    await error_of(await client.delete(missing, headers=tenant.headers), 404)
