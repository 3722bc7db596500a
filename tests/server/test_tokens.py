"""User tokens (docs/auth.md): minted by a tenant key, reaching one user's sessions only.

Against the whole app on a real socket, real Postgres. The route-by-credential matrix
(tests/server/test_access_matrix.py) covers every route; this file covers what a token
itself is: its claims, its lifetime, its signature, its key's rotation, tickets and the
WebSocket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestClient

from chat_storage.server import tokens as tokens_mod
from chat_storage.storage import signing_keys
from tests.conftest import Tenant
from tests.support.bearer import bearer, rejected, session_of
from tests.support.streamkit import recv, recv_until, subscribe

Client = TestClient  # type: ignore[type-arg]


async def mint(client: Client, tenant: Tenant, user_id: str = "alice",
               **body: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/tokens", json={"user_id": user_id, **body},
                          headers=tenant.headers)
    assert r.status == 201, await r.text()
    assert r.headers["Cache-Control"] == "no-store"
    minted: dict[str, Any] = await r.json()
    return minted


async def test_minted_token_says_what_it_grants(client: Client, tenant: Tenant) -> None:
    before = time.time()
    minted = await mint(client, tenant, ttl_s=120)
    assert minted["user_id"] == "alice"
    assert minted["scopes"] == ["read", "write", "stream"]
    assert minted["session_ids"] is None
    claims = jwt.decode(minted["token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["tid"] == str(tenant.id)
    assert before + 119 <= claims["exp"] <= time.time() + 121
    header = jwt.get_unverified_header(minted["token"])
    assert header["alg"] == "HS256" and signing_keys.is_own_kid(header["kid"])


async def test_token_reaches_only_its_users_sessions(client: Client, tenant: Tenant) -> None:
    mine = await session_of(client, tenant, "alice")
    theirs = await session_of(client, tenant, "bob")
    token = (await mint(client, tenant))["token"]
    r = await client.get(f"/api/v1/sessions/{mine}", headers=bearer(token))
    assert r.status == 200
    r = await client.get(f"/api/v1/sessions/{theirs}", headers=bearer(token))
    assert r.status == 404
    assert (await r.json())["message"] == "session not found"
    # as absent as a session that never existed
    absent = await client.get(f"/api/v1/sessions/{uuid.uuid4()}", headers=bearer(token))
    assert (await absent.json())["message"] == (await r.json())["message"]
    listed = await client.get("/api/v1/sessions", headers=bearer(token))
    assert [s["id"] for s in (await listed.json())["data"]] == [mine]
    r = await client.get("/api/v1/sessions?user_id=bob", headers=bearer(token))
    assert r.status == 403 and (await r.json())["errors"][0]["field"] == "user_id"


async def test_body_user_must_be_the_tokens(client: Client, tenant: Tenant) -> None:
    token = (await mint(client, tenant))["token"]
    r = await client.post("/api/v1/sessions", json={"user_id": "bob"}, headers=bearer(token))
    assert r.status == 403
    body = await r.json()
    assert body["code"] == "forbidden" and body["errors"][0]["field"] == "user_id"
    r = await client.post("/api/v1/sessions", json={"user_id": "alice"}, headers=bearer(token))
    assert r.status == 201 and (await r.json())["user_id"] == "alice"


async def test_search_and_feedback_see_only_the_user(client: Client, tenant: Tenant) -> None:
    sids = {}
    for user in ("alice", "bob"):
        sid = sids[user] = await session_of(client, tenant, user)
        r = await client.post(f"/api/v1/sessions/{sid}/messages", headers=tenant.headers,
                              json={"role": "user", "content": f"zebra facts from {user}"})
        assert r.status == 201
    token = (await mint(client, tenant))["token"]
    r = await client.get("/api/v1/search?q=zebra", headers=bearer(token))
    assert r.status == 200
    assert [h["session_id"] for h in (await r.json())["data"]] == [sids["alice"]]
    r = await client.get("/api/v1/users/bob/export", headers=bearer(token))
    assert r.status == 403


async def test_tenant_wide_routes_refuse_user_tokens(client: Client, tenant: Tenant) -> None:
    token = (await mint(client, tenant))["token"]
    r = await client.delete("/api/v1/users/alice/sessions", headers=bearer(token))
    assert r.status == 403
    r = await client.post("/api/v1/tokens", json={"user_id": "alice"}, headers=bearer(token))
    assert r.status == 403 and "tenant" in (await r.json())["message"]


async def test_scopes_limit_the_routes(client: Client, tenant: Tenant) -> None:
    sid = await session_of(client, tenant, "alice")
    token = (await mint(client, tenant, scopes=["read"]))["token"]
    r = await client.get(f"/api/v1/sessions/{sid}/messages", headers=bearer(token))
    assert r.status == 200
    r = await client.post(f"/api/v1/sessions/{sid}/messages", headers=bearer(token),
                          json={"role": "user", "content": "hi"})
    assert r.status == 403 and "'write'" in (await r.json())["message"]
    r = await client.post(f"/api/v1/sessions/{sid}/ws-tickets", headers=bearer(token))
    assert r.status == 403 and "'stream'" in (await r.json())["message"]


async def test_session_list_in_token(client: Client, tenant: Tenant) -> None:
    one = await session_of(client, tenant, "alice")
    two = await session_of(client, tenant, "alice")
    token = (await mint(client, tenant, session_ids=[one]))["token"]
    assert (await client.get(f"/api/v1/sessions/{one}", headers=bearer(token))).status == 200
    assert (await client.get(f"/api/v1/sessions/{two}", headers=bearer(token))).status == 404
    # not a session's route: a token for some sessions cannot list or make others
    assert (await client.get("/api/v1/sessions", headers=bearer(token))).status == 403
    r = await client.post("/api/v1/sessions", json={"user_id": "alice"}, headers=bearer(token))
    assert r.status == 403


async def test_minting_checks_its_body(client: Client, tenant: Tenant) -> None:
    bobs = await session_of(client, tenant, "bob")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"user_id": "alice", "session_ids": [bobs]}, "session_ids.0"),
        ({"user_id": "alice", "ttl_s": 86_401}, "ttl_s"),
        ({"user_id": "alice", "ttl_s": 59}, "ttl_s"),
        ({"user_id": "alice", "scopes": ["admin"]}, "scopes.0"),
        ({"user_id": "alice", "scopes": []}, "scopes"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "alice", "tenant": "x"}, "tenant"),
    ]
    for body, field in cases:
        r = await client.post("/api/v1/tokens", json=body, headers=tenant.headers)
        assert r.status == 400, body
        assert [e["field"] for e in (await r.json())["errors"]] == [field], body


async def test_read_key_cannot_mint(client: Client, tenant: Tenant, pool: asyncpg.Pool) -> None:
    from chat_storage.storage import apikeys

    async with pool.acquire() as conn:
        read = await apikeys.create_key(conn, tenant.name, scope="read")
    r = await client.post("/api/v1/tokens", json={"user_id": "alice"},
                          headers={"X-Api-Key": read.key})
    assert r.status == 403


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "bob"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_bad_tokens_answer_401_saying_why(client: Client, tenant: Tenant,
                                                pool: asyncpg.Pool) -> None:
    token = (await mint(client, tenant))["token"]
    assert "altered" in await rejected(client, _tamper(token))
    assert "malformed" in await rejected(client, "not-a-jwt")
    kid = jwt.get_unverified_header(token)["kid"]
    async with pool.acquire() as conn:
        key = await signing_keys.key_by_id(conn, kid, _sealer())
    assert key is not None
    expired = jwt.encode({"iss": "chat-storage", "aud": "chat-storage", "tid": str(tenant.id),
                          "sub": "alice", "scope": "read", "iat": int(time.time()) - 3600,
                          "exp": int(time.time()) - 60}, key.secret, algorithm="HS256",
                         headers={"kid": kid})
    assert "expired" in await rejected(client, expired)
    unsigned = jwt.encode({"sub": "alice"}, None, algorithm="none", headers={"kid": kid})
    assert "algorithm" in await rejected(client, unsigned)
    foreign = jwt.encode({"sub": "alice"}, "x" * 32, algorithm="HS256",
                         headers={"kid": "csk_0123456789abcdef"})
    assert "rotated or is unknown" in await rejected(client, foreign)
    r = await client.get("/api/v1/sessions", headers={"Authorization": "Basic abc"})
    assert r.status == 401


def _sealer() -> Any:
    from chat_storage.storage.sealing import Sealer
    from tests.conftest import TEST_SECRET_KEY

    return Sealer(TEST_SECRET_KEY.encode())


async def test_rotation_ends_old_tokens(aiohttp_client: Any, settings: Any, tenant: Tenant,
                                        pool: asyncpg.Pool) -> None:
    import dataclasses

    from chat_storage.server.app import create_app

    client = await aiohttp_client(create_app(dataclasses.replace(settings, api_key_cache_s=0.01)))
    old = (await mint(client, tenant))["token"]
    assert (await client.get("/api/v1/sessions", headers=bearer(old))).status == 200
    async with pool.acquire() as conn:
        retired = await signing_keys.rotate(conn, tenant.name)
    assert retired == jwt.get_unverified_header(old)["kid"]
    await asyncio.sleep(0.02)  # past the key cache's lifetime (10 ms, set above)
    assert "rotated" in await rejected(client, old)
    new = (await mint(client, tenant))["token"]
    assert jwt.get_unverified_header(new)["kid"] != retired
    assert (await client.get("/api/v1/sessions", headers=bearer(new))).status == 200


async def test_without_a_secret_minting_is_503(aiohttp_client: Any, settings: Any,
                                               tenant: Tenant) -> None:
    import dataclasses

    from chat_storage.server.app import create_app

    client = await aiohttp_client(create_app(dataclasses.replace(settings, secret_key=None)))
    r = await client.post("/api/v1/tokens", json={"user_id": "alice"}, headers=tenant.headers)
    assert r.status == 503 and "CHAT_SECRET_KEY" in (await r.json())["message"]


async def test_websocket_takes_a_bearer_header(client: Client, tenant: Tenant) -> None:
    sid = await session_of(client, tenant, "alice")
    token = (await mint(client, tenant))["token"]
    ws = await client.ws_connect(f"/api/v1/sessions/{sid}/ws", headers=bearer(token))
    await subscribe(ws)
    await ws.send_json({"type": "message.create", "ref": "m1", "role": "user", "content": "hi"})
    frames = await recv_until(ws, lambda f: f.get("ref") == "m1")
    assert frames[-1]["type"] == "ack", frames[-1]
    await ws.close()
    # ?token= is not a way in (it would end up in logs and histories): browsers use tickets
    r = await client.get(f"/api/v1/sessions/{sid}/ws?token={token}")
    assert r.status == 401 and (await r.json())["code"] == "unauthorized"


async def test_stream_only_token_watches_but_cannot_write(client: Client,
                                                          tenant: Tenant) -> None:
    sid = await session_of(client, tenant, "alice")
    token = (await mint(client, tenant, scopes=["stream"]))["token"]
    r = await client.post(f"/api/v1/sessions/{sid}/ws-tickets", headers=bearer(token))
    assert r.status == 201
    ticket = (await r.json())["ticket"]
    ws = await client.ws_connect(f"/api/v1/sessions/{sid}/ws?ticket={ticket}")
    await subscribe(ws)
    await ws.send_json({"type": "message.create", "ref": "m1", "role": "user", "content": "x"})
    frame = await recv(ws)
    while frame["type"] != "error":
        frame = await recv(ws)
    assert frame["code"] == "forbidden" and frame["ref"] == "m1"
    await ws.close()
    # the ticket was for this session only, and the user's own
    bobs = await session_of(client, tenant, "bob")
    r = await client.post(f"/api/v1/sessions/{bobs}/ws-tickets", headers=bearer(token))
    assert r.status == 404


async def test_sse_takes_a_bearer_header(client: Client, tenant: Tenant) -> None:
    sid = await session_of(client, tenant, "alice")
    token = (await mint(client, tenant, scopes=["stream"]))["token"]
    async with client.get(f"/api/v1/sessions/{sid}/events", headers=bearer(token)) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
    bobs = await session_of(client, tenant, "bob")
    r = await client.get(f"/api/v1/sessions/{bobs}/events", headers=bearer(token))
    assert r.status == 404


@pytest.mark.parametrize("scopes", [["read"], ["write"]])
async def test_streams_need_the_stream_scope(client: Client, tenant: Tenant,
                                             scopes: list[str]) -> None:
    sid = await session_of(client, tenant, "alice")
    token = (await mint(client, tenant, scopes=scopes))["token"]
    r = await client.get(f"/api/v1/sessions/{sid}/events", headers=bearer(token))
    assert r.status == 403


def test_module_constants() -> None:
    assert tokens_mod.ISSUER == "chat-storage"


async def test_idempotency_keys_are_each_users_own(client: Client, tenant: Tenant) -> None:
    answers = []
    for user in ("alice", "bob"):
        token = (await mint(client, tenant, user))["token"]
        headers = {**bearer(token), "Idempotency-Key": "same-key"}
        for _ in range(2):  # the second is the first one's replay
            r = await client.post("/api/v1/sessions", json={"user_id": user}, headers=headers)
            assert r.status == 201, await r.text()
            answers.append(((await r.json())["user_id"], (await r.json())["id"],
                            r.headers.get("Idempotent-Replayed")))
    (a1, a2, b1, b2) = answers
    assert a1[0] == a2[0] == "alice" and b1[0] == b2[0] == "bob"
    assert a1[1] == a2[1] and b1[1] == b2[1] and a1[1] != b1[1]
    assert (a2[2], b1[2], b2[2]) == ("true", None, "true")


async def test_a_cached_token_still_expires() -> None:
    """A verified token is kept (loadtest/bench_tokens.py), but not past its exp."""
    from chat_storage.server.tokens import InvalidToken, Tokens
    from chat_storage.storage.overrides import NO_OVERRIDES
    from chat_storage.storage.signing_keys import SigningKey

    key = SigningKey("csk_" + "a" * 16, uuid.uuid4(), "t", b"k" * 32, NO_OVERRIDES)
    tokens = Tokens(None, None, cache_ttl_s=3600, leeway_s=0,  # type: ignore[arg-type]
                    acquire_timeout_s=1)
    tokens._by_kid.put(key.kid, key)
    now = int(time.time())
    token = jwt.encode({"iss": "chat-storage", "aud": "chat-storage", "tid": str(key.tenant_id),
                        "sub": "alice", "scope": "read", "iat": now, "exp": now + 1},
                       key.secret, algorithm="HS256", headers={"kid": key.kid})
    assert (await tokens.verify(token, None)).user_id == "alice"
    assert (await tokens.verify(token, None)).user_id == "alice"  # from the cache
    await asyncio.sleep(max(0.0, now + 1.05 - time.time()))  # past its exp, not a race
    with pytest.raises(InvalidToken, match="expired"):
        await tokens.verify(token, None)


async def test_a_token_claiming_another_tenant_under_this_ones_key_is_refused() -> None:
    """The key names the tenant; a `tid` that disagrees means the claims were made up."""
    from chat_storage.server.tokens import InvalidToken, Tokens
    from chat_storage.storage.overrides import NO_OVERRIDES
    from chat_storage.storage.signing_keys import SigningKey

    key = SigningKey("csk_" + "b" * 16, uuid.uuid4(), "t", b"k" * 32, NO_OVERRIDES)
    tokens = Tokens(None, None, cache_ttl_s=3600, leeway_s=0,  # type: ignore[arg-type]
                    acquire_timeout_s=1)
    tokens._by_kid.put(key.kid, key)
    now = int(time.time())
    token = jwt.encode({"iss": "chat-storage", "aud": "chat-storage", "tid": str(uuid.uuid4()),
                        "sub": "alice", "scope": "read", "iat": now, "exp": now + 60},
                       key.secret, algorithm="HS256", headers={"kid": key.kid})
    with pytest.raises(InvalidToken, match="altered"):
        await tokens.verify(token, None)
