"""Full-text search and the feedback list, over HTTP."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from tests.conftest import Tenant


async def new_session(client: Any, tenant: Tenant, user_id: str) -> str:
    r = await client.post("/api/v1/sessions", json={"user_id": user_id}, headers=tenant.headers)
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])


async def add(client: Any, tenant: Tenant, sid: str, content: str,
              role: str = "user") -> dict[str, Any]:
    r = await client.post(f"/api/v1/sessions/{sid}/messages",
                          json={"role": role, "content": content}, headers=tenant.headers)
    assert r.status == 201, await r.text()
    return dict(await r.json())


async def get(client: Any, tenant: Tenant, path: str, status: int = 200, **query: Any) -> Any:
    r = await client.get(path, params={k: str(v) for k, v in query.items()},
                         headers=tenant.headers)
    assert r.status == status, await r.text()
    return await r.json()


async def search(client: Any, tenant: Tenant, **query: Any) -> Any:
    return await get(client, tenant, "/api/v1/search", **query)


def ids(page: Any, key: str = "message_id") -> list[str]:
    return [item[key] for item in page["data"]]


# ---------------------------------------------------------------- search

async def test_search_stems_filters_and_scopes(
    client: Any, tenant: Tenant, other_tenant: Tenant
) -> None:
    s1 = await new_session(client, tenant, "u1")
    s2 = await new_session(client, tenant, "u2")
    m1 = await add(client, tenant, s1, "The runners were running along the quiet river bank")
    await add(client, tenant, s1, "I like cats", role="assistant")
    m3 = await add(client, tenant, s2, "She runs every morning before work")
    theirs = await new_session(client, other_tenant, "u1")
    await add(client, other_tenant, theirs, "running is my hobby")

    page = await search(client, tenant, q="run")
    assert ids(page) == [m3["id"], m1["id"]]  # newest first
    hit = page["data"][1]
    assert hit == {"session_id": s1, "message_id": m1["id"], "seq": 1, "role": "user",
                   "snippet": hit["snippet"], "created_at": m1["created_at"]}
    assert "running" in hit["snippet"]
    assert "<b>" not in hit["snippet"]
    assert page["has_more"] is False

    assert ids(await search(client, tenant, q="run", user_id="u1")) == [m1["id"]]
    assert ids(await search(client, tenant, q="run", session_id=s2)) == [m3["id"]]
    assert ids(await search(client, tenant, q="run", session_id=s2, user_id="u1")) == []
    assert ids(await search(client, tenant, q="run", session_id=theirs)) == []
    assert ids(await search(client, tenant, q='"quiet river"')) == [m1["id"]]
    assert ids(await search(client, tenant, q='"river quiet"')) == []
    assert ids(await search(client, tenant, q="run -morning")) == [m1["id"]]
    assert ids(await search(client, tenant, q="cat")) != []
    assert ids(await search(client, tenant, q="the")) == []  # only a stop word
    assert len(ids(await search(client, other_tenant, q="run"))) == 1

    r = await client.delete(f"/api/v1/sessions/{s1}/messages/{m1['id']}", headers=tenant.headers)
    assert r.status == 204
    assert ids(await search(client, tenant, q="run")) == [m3["id"]]


async def test_search_pages_newest_first(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant, "pager")
    made = [await add(client, tenant, sid, f"pagination token number {i}") for i in range(7)]
    await add(client, tenant, sid, "something else entirely")
    seen: list[str] = []
    page = await search(client, tenant, q="pagination", limit=3)
    sizes = []
    for _ in range(10):
        seen += ids(page)
        sizes.append(len(page["data"]))
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        # an item added meanwhile is newer than the cursor: it is not served
        await add(client, tenant, sid, "late pagination message")
        page = await search(client, tenant, q="pagination", limit=3, cursor=page["next_cursor"])
    assert sizes == [3, 3, 1]
    assert seen == [m["id"] for m in reversed(made)]


async def test_search_query_errors(client: Any, tenant: Tenant, other_tenant: Tenant) -> None:
    sid = await new_session(client, tenant, "u")
    for i in range(3):
        await add(client, tenant, sid, f"apple {i}")
    cursor = (await search(client, tenant, q="apple", limit=1))["next_cursor"]
    assert cursor
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "q"), ({"q": ""}, "q"), ({"q": "x" * 501}, "q"),
        ({"q": "a", "session_id": "nope"}, "session_id"),
        ({"q": "a", "limit": 0}, "limit"),
        ({"q": "apple pie", "cursor": cursor}, "cursor"),
        ({"q": "apple", "user_id": "u", "cursor": cursor}, "cursor"),
    ]
    for query, field in cases:
        body = await get(client, tenant, "/api/v1/search", 400, **query)
        assert field in {e["field"] for e in body["errors"]}, (query, body)
    # a cursor is bound to its tenant too
    body = await get(client, other_tenant, "/api/v1/search", 400, q="apple", cursor=cursor)
    assert body["errors"][0]["field"] == "cursor"
    r = await client.get("/api/v1/search", params={"q": "apple"})
    assert r.status == 401


# ---------------------------------------------------------------- feedback

async def rate(client: Any, tenant: Tenant, msg: dict[str, Any], feedback: Any) -> None:
    r = await client.patch(f"/api/v1/sessions/{msg['session_id']}/messages/{msg['id']}",
                           json={"feedback": feedback}, headers=tenant.headers)
    assert r.status == 200, await r.text()


async def test_feedback_list(
    client: Any, tenant: Tenant, other_tenant: Tenant, pool: asyncpg.Pool
) -> None:
    s1 = await new_session(client, tenant, "alice")
    s2 = await new_session(client, tenant, "bob")
    a = [await add(client, tenant, s1, f"answer a{i}", role="assistant") for i in range(3)]
    b = [await add(client, tenant, s2, f"answer b{i}", role="assistant") for i in range(2)]
    await add(client, tenant, s1, "unrated", role="assistant")
    theirs = await add(client, other_tenant, await new_session(client, other_tenant, "alice"),
                       "theirs", role="assistant")
    await rate(client, other_tenant, theirs, {"rating": 1})

    await rate(client, tenant, a[0], {"rating": 1, "comment": "good"})
    await rate(client, tenant, b[0], {"rating": -1})
    since = await pool.fetchval("SELECT now()")
    await rate(client, tenant, a[1], {"rating": -1, "comment": "wrong source"})
    await rate(client, tenant, b[1], {"rating": 1})
    await rate(client, tenant, a[2], {"rating": 1})
    await rate(client, tenant, a[2], None)  # cleared: no longer listed
    await rate(client, tenant, a[0], {"rating": 1, "comment": "really good"})  # now the newest

    url = "/api/v1/feedback"
    page = await get(client, tenant, url)
    assert ids(page, "id") == [a[0]["id"], b[1]["id"], a[1]["id"], b[0]["id"]]
    assert page["data"][0]["feedback"] == {"rating": 1, "comment": "really good"}
    assert page["data"][0]["content"] == "answer a0"
    assert ids(await get(client, tenant, url, rating=-1), "id") == [a[1]["id"], b[0]["id"]]
    assert ids(await get(client, tenant, url, rating=1, user_id="alice"), "id") == [a[0]["id"]]
    assert ids(await get(client, tenant, url, user_id="bob"), "id") == [b[1]["id"], b[0]["id"]]
    assert ids(await get(client, tenant, url, since=since.isoformat()), "id") == [
        a[0]["id"], b[1]["id"], a[1]["id"]]
    later = (since + dt.timedelta(days=1)).isoformat()
    assert ids(await get(client, tenant, url, since=later), "id") == []
    assert ids(await get(client, other_tenant, url), "id") == [theirs["id"]]

    seen: list[str] = []
    page = await get(client, tenant, url, limit=3)
    assert page["has_more"] is True
    seen += ids(page, "id")
    page = await get(client, tenant, url, limit=3, cursor=page["next_cursor"])
    seen += ids(page, "id")
    assert page["has_more"] is False
    assert seen == [a[0]["id"], b[1]["id"], a[1]["id"], b[0]["id"]]

    r = await client.delete(f"/api/v1/sessions/{s2}/messages/{b[1]['id']}",
                            headers=tenant.headers)
    assert r.status == 204
    assert ids(await get(client, tenant, url, user_id="bob"), "id") == [b[0]["id"]]


async def test_feedback_query_errors(client: Any, tenant: Tenant) -> None:
    empty = await get(client, tenant, "/api/v1/feedback", limit=1)
    assert (empty["data"], empty["next_cursor"], empty["has_more"]) == ([], None, False)
    s = await new_session(client, tenant, "u")
    for i in range(2):
        await rate(client, tenant, await add(client, tenant, s, f"x{i}"), {"rating": 1})
    cursor = (await get(client, tenant, "/api/v1/feedback", limit=1))["next_cursor"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"rating": 2}, "rating"), ({"rating": "good"}, "rating"),
        ({"since": "yesterday"}, "since"), ({"since": "2026-01-01T00:00:00"}, "since"),
        ({"limit": 500}, "limit"), ({"cursor": "bm9wZQ"}, "cursor"),
        ({"rating": 1, "cursor": cursor}, "cursor"),
    ]
    for query, field in cases:
        body = await get(client, tenant, "/api/v1/feedback", 400, **query)
        assert field in {e["field"] for e in body["errors"]}, (query, body)
