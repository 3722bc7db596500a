"""Every route by every credential, against two real replicas (docs/api.md, "Credentials").

The routes come from the app's own endpoint list; each must have a row in :data:`ROWS`
(how to call it, and what a caller that may use it gets), so a route added without a row
fails :func:`test_every_route_has_a_row`. What each credential should get is derived
here from the contract, independently of the route tables:

- no credential, an expired or a tampered token → 401;
- a tenant key: its scope against the route's (``admin`` > ``write`` > ``read``);
- a user token of user A: the route's answer on A's own session, except tenant-wide
  routes (403);
- a user token of user B: 404 for A's session (as if absent), 403 for A's user id in a
  path or body, and a list or search that shows none of A's data;
- another tenant's key or token: 404 for A's session, and none of A's data anywhere;
- an OIDC token of user A (from a local identity provider the tenant trusts): as A's
  token.

Each cell gets fresh data (a session of A with a message and an attachment), made with
the admin key, so a delete in one cell does not change the next. Cells alternate between
the two replicas, and every token is minted on the first: a token works on any replica.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
import pytest_asyncio
from aiohttp import web

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.routing import ENDPOINTS_KEY, Endpoint
from chat_storage.storage import apikeys, db, signing_keys, tenants
from chat_storage.storage.principal import Scope
from chat_storage.storage.sealing import Sealer
from tests.conftest import TEST_SECRET_KEY, Tenant, make_tenant
from tests.support.idp import Idp
from tests.support.procs import Cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
A, B = "user-a", "user-b"
SHA = "0" * 64


# ------------------------------------------------------------------ the routes' rows

@dataclasses.dataclass(frozen=True)
class Fixture:
    """What a cell works on: A's session, its message, its attachment."""

    session_id: str
    message_id: str
    attachment_id: str


@dataclasses.dataclass(frozen=True)
class Row:
    """How to call a route, and the status a caller allowed to use it gets."""

    ok: int
    body: Callable[[Fixture], Any] | None = None
    query: str = ""
    # the key scope the contract says it needs (default: read for GET, else write)
    scope: Scope | None = None
    # docs/api.md: routes for the whole tenant, never a user's token
    tenant_wide: bool = False
    # what a user token needs: read for GET, else write; stream for the live routes
    token_scope: str | None = None
    websocket: bool = False


SESSION = "/api/v1/sessions/{session_id}"
ROWS: dict[tuple[str, str], Row] = {
    ("POST", "/api/v1/sessions"): Row(201, body=lambda f: {"user_id": A}),
    ("GET", "/api/v1/sessions"): Row(200),
    ("GET", SESSION): Row(200),
    ("PATCH", SESSION): Row(200, body=lambda f: {"title": "renamed"}),
    ("DELETE", SESSION): Row(204),
    ("PUT", SESSION + "/favorite"): Row(200),
    ("DELETE", SESSION + "/favorite"): Row(200),
    ("DELETE", "/api/v1/users/{user_id}/sessions"): Row(204, scope="admin", tenant_wide=True),
    ("POST", SESSION + "/messages"): Row(
        201, body=lambda f: {"role": "user", "content": "hello"}),
    ("POST", SESSION + "/messages/batch"): Row(
        201, body=lambda f: {"messages": [{"role": "user", "content": "hello"}]}),
    ("GET", SESSION + "/messages"): Row(200),
    ("GET", SESSION + "/messages/{message_id}"): Row(200),
    ("PATCH", SESSION + "/messages/{message_id}"): Row(
        200, body=lambda f: {"metadata": {"k": "v"}}),
    ("DELETE", SESSION + "/messages/{message_id}"): Row(204),
    ("POST", SESSION + "/attachments"): Row(
        201, body=lambda f: {"name": "a.txt", "mime": "text/plain", "size": 0, "sha256": SHA}),
    ("GET", SESSION + "/attachments"): Row(200),
    # not uploaded yet: the caller may, the object is not there (409)
    ("POST", SESSION + "/attachments/{aid}/complete"): Row(409),
    ("GET", SESSION + "/attachments/{aid}"): Row(200),
    ("GET", "/api/v1/search"): Row(200, query="?q=matrixword"),
    ("GET", "/api/v1/feedback"): Row(200),
    ("GET", SESSION + "/export"): Row(200),
    ("GET", "/api/v1/users/{user_id}/export"): Row(200),
    ("POST", SESSION + "/ws-tickets"): Row(201, scope="read", token_scope="stream"),
    ("GET", SESSION + "/ws"): Row(101, scope="write", token_scope="stream", websocket=True),
    ("GET", SESSION + "/events"): Row(200, token_scope="stream"),
    ("GET", SESSION + "/messages/{message_id}/ui-stream"): Row(200, token_scope="stream"),
    # the fixture's message is stored complete: no answer in progress
    ("GET", SESSION + "/ui-stream"): Row(204, token_scope="stream"),
    ("POST", "/api/v1/tokens"): Row(201, body=lambda f: {"user_id": A}, tenant_wide=True),
}


def _endpoints() -> list[Endpoint]:
    app = create_app(Settings(database_url="postgresql://unused/unused"))
    return [ep for ep in app[ENDPOINTS_KEY] if ep.auth]


ENDPOINTS = _endpoints()


async def test_every_route_has_a_row() -> None:
    served = {(ep.method, ep.path) for ep in ENDPOINTS}
    assert served - ROWS.keys() == set(), "a route without a row in the access matrix"
    assert ROWS.keys() - served == set(), "a row for a route that is not served"


# ------------------------------------------------------------------ the credentials

CREDENTIALS = ["key-admin", "key-write", "key-read", "token-a", "token-b", "token-a-read",
               "expired", "tampered", "other-tenant-key", "other-tenant-token-a", "oidc-a",
               "none"]


@dataclasses.dataclass
class World:
    servers: list[str]
    tenant: Tenant
    other: Tenant
    headers: dict[str, dict[str, str]]
    http: aiohttp.ClientSession


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = B
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def _mint(http: aiohttp.ClientSession, base: str, tenant: Tenant, user: str,
                **body: Any) -> str:
    async with http.post(f"{base}/api/v1/tokens", json={"user_id": user, **body},
                         headers=tenant.headers) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["token"])


async def _expired(pool: asyncpg.Pool, token: str, tenant: Tenant) -> str:
    """A token of A signed with the tenant's real key, expired an hour ago."""
    kid = jwt.get_unverified_header(token)["kid"]
    async with pool.acquire() as conn:
        key = await signing_keys.key_by_id(conn, kid, Sealer(TEST_SECRET_KEY.encode()))
    assert key is not None
    now = int(time.time())
    return jwt.encode({"iss": "chat-storage", "aud": "chat-storage", "tid": str(tenant.id),
                       "sub": A, "scope": "read write stream", "iat": now - 7200,
                       "exp": now - 3600}, key.secret, algorithm="HS256", headers={"kid": kid})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(database_url: str, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[World]:
    cluster = Cluster(database_url, Path(tmp_path_factory.mktemp("matrix")))
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    # a local identity provider the tenant trusts: its tokens for A act as A's
    idp = Idp()
    idp_runner = web.AppRunner(idp.app())
    await idp_runner.setup()
    site = web.TCPSite(idp_runner, "127.0.0.1", 0)
    await site.start()
    idp.listening_on(idp_runner.addresses[0][1])
    try:
        servers = await cluster.start(2, env={"CHAT_SECRET_KEY": TEST_SECRET_KEY,
                                                   "CHAT_API_KEY_CACHE_S": "1"})
        tenant, other = await make_tenant(pool, "matrix"), await make_tenant(pool, "other")
        async with pool.acquire() as conn:
            await tenants.update_tenant(conn, tenant.name, oidc_issuer=idp.issuer,
                                        oidc_audience="chat-app")
        oidc_token = idp.token(sub=A, exp=int(time.time()) + 3600)
        headers_oidc = {"Authorization": f"Bearer {oidc_token}"}
        headers: dict[str, dict[str, str]] = {"key-admin": tenant.headers, "none": {}}
        async with pool.acquire() as conn:
            for scope in ("write", "read"):
                made = await apikeys.create_key(conn, tenant.name, scope=scope)
                headers[f"key-{scope}"] = {"X-Api-Key": made.key}
        headers["other-tenant-key"] = other.headers
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            first = servers[0].base
            token_a = await _mint(http, first, tenant, A)
            tokens = {
                "token-a": token_a,
                "token-b": await _mint(http, first, tenant, B),
                "token-a-read": await _mint(http, first, tenant, A, scopes=["read"]),
                "expired": await _expired(pool, token_a, tenant),
                "tampered": _tamper(token_a),
                "other-tenant-token-a": await _mint(http, first, other, A),
            }
            headers.update({name: {"Authorization": f"Bearer {token}"}
                            for name, token in tokens.items()})
            headers["oidc-a"] = headers_oidc
            yield World([s.base for s in servers], tenant, other, headers, http)
    finally:
        await pool.close()
        await cluster.close()
        await idp_runner.cleanup()


# ------------------------------------------------------------------ what the contract says

KEY_SCOPES: dict[str, Scope] = {"key-admin": "admin", "key-write": "write", "key-read": "read"}
ORDER: list[Scope] = ["read", "write", "admin"]


def expected(ep: Endpoint, row: Row, credential: str) -> int:
    """The status ``credential`` gets on ``ep`` (called on A's data)."""
    session_scoped = "{session_id}" in ep.path
    read = ep.method == "GET"
    if credential in ("none", "expired", "tampered"):
        return 401
    if credential in KEY_SCOPES:
        needed = row.scope or ("read" if read else "write")
        return row.ok if ORDER.index(KEY_SCOPES[credential]) >= ORDER.index(needed) else 403
    if credential == "other-tenant-key":
        return 404 if session_scoped else row.ok
    # a user's token
    if row.tenant_wide:
        return 403
    token_scope = row.token_scope or ("read" if read else "write")
    if credential == "token-a-read" and token_scope != "read":
        return 403
    if credential == "token-b":
        if session_scoped:
            return 404
        if "{user_id}" in ep.path or (row.body is not None and "user_id" in row.body(_NONE)):
            return 403  # A's user id in the path or the body
        return row.ok
    if credential == "other-tenant-token-a":
        return 404 if session_scoped else row.ok
    return row.ok  # token-a, oidc-a


_NONE = Fixture("", "", "")


async def _fresh(world: World, base: str) -> Fixture:
    """A new session of A with one message (with feedback) and one attachment (announced,
    not uploaded)."""
    admin = world.headers["key-admin"]
    http = world.http
    async with http.post(f"{base}/api/v1/sessions", json={"user_id": A}, headers=admin) as r:
        assert r.status == 201, await r.text()
        sid = (await r.json())["id"]
    async with http.post(f"{base}/api/v1/sessions/{sid}/messages", headers=admin,
                         json={"role": "user", "content": "matrixword from A"}) as r:
        assert r.status == 201, await r.text()
        mid = (await r.json())["id"]
    async with http.patch(f"{base}/api/v1/sessions/{sid}/messages/{mid}", headers=admin,
                          json={"feedback": {"rating": 1}}) as r:
        assert r.status == 200, await r.text()  # so that /feedback has something of A's
    async with http.post(f"{base}/api/v1/sessions/{sid}/attachments", headers=admin, json={
            "name": "a.txt", "mime": "text/plain", "size": 3, "sha256": SHA}) as r:
        assert r.status == 201, await r.text()
        aid = (await r.json())["attachment"]["id"]
    return Fixture(sid, mid, aid)


def _url(base: str, ep: Endpoint, row: Row, f: Fixture) -> str:
    path = (ep.path.replace("{session_id}", f.session_id)
            .replace("{message_id}", f.message_id).replace("{aid}", f.attachment_id)
            .replace("{user_id}", A))
    return f"{base}{path}{row.query}"


async def _call(world: World, base: str, ep: Endpoint, row: Row, f: Fixture,
                headers: dict[str, str]) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
    url = _url(base, ep, row, f)
    if row.websocket:
        try:
            ws = await world.http.ws_connect(url, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, "", exc.headers or {}
        await ws.close()
        return 101, "", {}
    body = None if row.body is None else row.body(f)
    async with world.http.request(ep.method, url, json=body, headers=headers) as r:
        # an event stream does not end: its status and first bytes are enough
        text = "" if r.content_type == "text/event-stream" else await r.text()
        return r.status, text, r.headers


@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda ep: f"{ep.method} {ep.path}")
async def test_route_answers_every_credential_as_the_contract_says(
        world: World, ep: Endpoint) -> None:
    row = ROWS[(ep.method, ep.path)]
    wrong: list[str] = []
    for i, credential in enumerate(CREDENTIALS):
        base = world.servers[i % 2]
        f = await _fresh(world, base)
        status, text, headers = await _call(world, base, ep, row, f, world.headers[credential])
        want = expected(ep, row, credential)
        if status != want:
            wrong.append(f"{credential}: {status}, want {want} {text[:200]}")
            continue
        if status == 401 and credential != "none":
            challenge = dict(headers).get("WWW-Authenticate", "")
            if not challenge.startswith('Bearer error="invalid_token"'):
                wrong.append(f"{credential}: 401 without the invalid_token challenge")
        if credential in ("token-b", "other-tenant-key", "other-tenant-token-a") and (
                200 <= status < 300 and (f.session_id in text or "matrixword" in text)):
            wrong.append(f"{credential}: answer shows A's data: {text[:200]}")
    assert not wrong, "\n".join(wrong)


async def test_a_token_minted_on_one_replica_works_on_the_other_until_rotated(
        world: World, database_url: str) -> None:
    first, second = world.servers
    token = await _mint(world.http, first, world.tenant, A, ttl_s=60)
    f = await _fresh(world, second)
    bearer = {"Authorization": f"Bearer {token}"}
    async with world.http.get(f"{second}/api/v1/sessions/{f.session_id}", headers=bearer) as r:
        assert r.status == 200
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await signing_keys.rotate(conn, world.tenant.name)
    finally:
        await pool.close()
    # each replica keeps an opened key for CHAT_API_KEY_CACHE_S (1 s here): poll, bounded,
    # until both refuse it
    deadline = time.monotonic() + 15
    refused: set[str] = set()
    while refused != {first, second} and time.monotonic() < deadline:
        for base in (first, second):
            async with world.http.get(f"{base}/api/v1/sessions", headers=bearer) as r:
                if r.status == 401:
                    assert "rotated" in (await r.json())["message"]
                    refused.add(base)
        if refused != {first, second}:
            await _pause()
    assert refused == {first, second}
    fresh = await _mint(world.http, second, world.tenant, A)
    async with world.http.get(f"{first}/api/v1/sessions",
                              headers={"Authorization": f"Bearer {fresh}"}) as r:
        assert r.status == 200
    # the other credentials of the matrix were minted before: mint them again
    for name, user, tenant, body in (("token-a", A, world.tenant, {}),
                                     ("token-b", B, world.tenant, {}),
                                     ("token-a-read", A, world.tenant, {"scopes": ["read"]})):
        token = await _mint(world.http, first, tenant, user, **body)
        world.headers[name] = {"Authorization": f"Bearer {token}"}


async def _pause() -> None:
    await asyncio.sleep(0.2)

