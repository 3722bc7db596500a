"""OIDC tokens as user tokens (docs/oidc.md): a JWT of an issuer a tenant trusts acts for
one user of that tenant.

The whole app on a real socket and real Postgres; the issuer is a real HTTP server on
127.0.0.1 (tests/support/idp.py) whose keys are made here. It counts the requests it
answers: that is how these tests see how often the service fetched its keys.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from chat_storage.runtime.settings import Settings
from chat_storage.server import oidc_keys
from chat_storage.server.app import create_app
from chat_storage.storage import tenants
from tests.conftest import Tenant, make_tenant
from tests.support.bearer import bearer, rejected, session_of
from tests.support.idp import JWKS, Idp
from tests.support.procs import ROOT, clean_env, cli_command, free_port
from tests.support.streamkit import recv_until, subscribe

Client = TestClient  # type: ignore[type-arg]
ServerFactory = Callable[..., Awaitable[TestServer]]
CACHE_S = 0.05  # the test app's credential caches: --no-oidc shows within this
FOREIGN = "not issued by this service or a trusted issuer"


def app_settings(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, api_key_cache_s=CACHE_S, **changes)


@pytest.fixture
async def app(aiohttp_client: Any, settings: Settings) -> Client:
    client: Client = await aiohttp_client(create_app(app_settings(settings)))
    return client


async def trust(pool: asyncpg.Pool, tenant: Tenant, issuer: str, audience: str = "chat-app",
                **more: Any) -> None:
    async with pool.acquire() as conn:
        await tenants.update_tenant(conn, tenant.name, oidc_issuer=issuer,
                                    oidc_audience=audience, **more)


async def accepted(client: Client, token: str) -> list[dict[str, Any]]:
    """The sessions the token's user sees (the token must be accepted)."""
    r = await client.get("/api/v1/sessions", headers=bearer(token))
    assert r.status == 200, await r.text()
    sessions: list[dict[str, Any]] = (await r.json())["data"]
    return sessions


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """An HS256 token made by hand (PyJWT refuses to HMAC with a public key's bytes)."""
    signing_input = (b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
                     + "." + b64(json.dumps(claims).encode()))
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def by_hand(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token PyJWT would not make (odd header or claim types), with a junk signature."""
    return (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
            + "." + b64(b"x" * 256))


def tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "bob"
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


async def test_token_reaches_its_users_sessions_only(app: Client, idp: Idp, tenant: Tenant,
                                                     pool: asyncpg.Pool) -> None:
    await trust(pool, tenant, idp.issuer)
    mine = await session_of(app, tenant, "alice")
    theirs = await session_of(app, tenant, "bob")
    for token in (idp.token("rsa-1"), idp.token("ec-1")):  # RS256 and ES256
        r = await app.get(f"/api/v1/sessions/{mine}", headers=bearer(token))
        assert r.status == 200, await r.text()
        r = await app.get(f"/api/v1/sessions/{theirs}", headers=bearer(token))
        assert r.status == 404
        assert [s["id"] for s in await accepted(app, token)] == [mine]
    token = idp.token()
    r = await app.post(f"/api/v1/sessions/{mine}/messages", headers=bearer(token),
                       json={"role": "user", "content": "hello"})
    assert r.status == 201  # all three scopes: read, write, stream
    r = await app.post("/api/v1/sessions", json={"user_id": "bob"}, headers=bearer(token))
    assert r.status == 403
    r = await app.delete("/api/v1/users/alice/sessions", headers=bearer(token))
    assert r.status == 403  # tenant-wide: a user's token never reaches it
    assert idp.requests[JWKS] == 1  # both keys came in one fetch, then from the cache


async def test_token_on_websocket_and_sse(app: Client, idp: Idp, tenant: Tenant,
                                          pool: asyncpg.Pool) -> None:
    await trust(pool, tenant, idp.issuer)
    sid = await session_of(app, tenant, "alice")
    token = idp.token()
    ws = await app.ws_connect(f"/api/v1/sessions/{sid}/ws", headers=bearer(token))
    await subscribe(ws)
    await ws.send_json({"type": "message.create", "ref": "m1", "role": "user", "content": "hi"})
    frames = await recv_until(ws, lambda f: f.get("ref") == "m1")
    assert frames[-1]["type"] == "ack", frames[-1]
    await ws.close()
    async with app.get(f"/api/v1/sessions/{sid}/events", headers=bearer(token)) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
    bobs = await session_of(app, tenant, "bob")
    r = await app.get(f"/api/v1/sessions/{bobs}/events", headers=bearer(token))
    assert r.status == 404


async def test_refused_tokens_say_why(app: Client, idp: Idp, tenant: Tenant,
                                      pool: asyncpg.Pool) -> None:
    await trust(pool, tenant, idp.issuer)
    now = int(time.time())
    assert FOREIGN in await rejected(app, idp.token(iss="https://idp.invalid/other"))
    assert FOREIGN in await rejected(app, idp.token(iss=idp.issuer + "/"))  # exactly
    assert "audience" in await rejected(app, idp.token(aud="another-app"))
    assert "altered" in await rejected(app, tampered(idp.token()))
    assert "'exp' is missing" in await rejected(app, idp.token(exp=None))
    # the clock skew allowed is CHAT_TOKEN_LEEWAY_S (30 s by default)
    assert "expired" in await rejected(app, idp.token(iat=now - 600, exp=now - 60))
    await accepted(app, idp.token(iat=now - 600, exp=now - 10))
    assert "not valid yet" in await rejected(app, idp.token(iat=now + 120))
    assert "not valid yet" in await rejected(app, idp.token(nbf=now + 120))
    await accepted(app, idp.token(iat=now + 10, nbf=now + 10))
    # no signature, or an HMAC keyed with the issuer's public key: key confusion
    unsigned = jwt.encode(idp.claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    assert "algorithm not accepted" in await rejected(app, unsigned)
    for secret in (idp.public_pem("rsa-1"), json.dumps(idp.jwk("rsa-1")).encode()):
        confused = hs256(idp.claims(), secret, "rsa-1")
        assert "algorithm not accepted" in await rejected(app, confused)
    # the JWK names RS256: the same RSA key under PS256 is refused, an EC key under RS256
    assert "for its key" in await rejected(app, idp.token("rsa-1", algorithm="PS256"))
    ec_key = jwt.encode(idp.claims(), idp.private["rsa-1"][0], algorithm="RS256",
                        headers={"kid": "ec-1"})
    assert "for its key" in await rejected(app, ec_key)
    assert "'sub' claim" in await rejected(app, idp.token(sub=""))
    assert "'sub' claim" in await rejected(app, idp.token(sub="x" * 129))
    assert "'sub' claim" in await rejected(app, idp.token(sub=None))
    # odd headers and claims are refused, never a 500
    for header in ({"alg": ["RS256"], "kid": "rsa-1"}, {"alg": "RS256", "kid": 7},
                   {"alg": "RS256", "kid": "rsa-1", "crit": "exp"}):
        message = await rejected(app, by_hand(header, idp.claims()))
        assert "algorithm not accepted" in message or "malformed" in message, message
    assert FOREIGN in await rejected(app, idp.token(iss=idp.issuer + "\x00"))
    listed = by_hand({"alg": "RS256", "kid": "rsa-1"}, idp.claims(iss=[idp.issuer]))
    assert FOREIGN in await rejected(app, listed)


async def test_rotated_key_is_fetched_once(aiohttp_client: Any, settings: Settings, idp: Idp,
                                           tenant: Tenant, pool: asyncpg.Pool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # 30 s between refetches is too long for a test: 1 s, far above a request's time here
    monkeypatch.setattr(oidc_keys, "MIN_REFETCH_S", 1.0)
    app = await aiohttp_client(create_app(app_settings(settings)))
    await trust(pool, tenant, idp.issuer)
    await accepted(app, idp.token("rsa-1"))
    assert idp.requests[JWKS] == 1
    idp.add_key("rsa-2", "RS256")
    idp.published = ["rsa-2"]  # rsa-1 retired
    # just fetched: neither the new key nor random kids make it fetch again yet
    assert "does not publish" in await rejected(app, idp.token("rsa-2"))
    for _ in range(5):
        forged = jwt.encode(idp.claims(), idp.private["rsa-2"][0], algorithm="RS256",
                            headers={"kid": uuid.uuid4().hex})
        assert "does not publish" in await rejected(app, forged)
    assert idp.requests[JWKS] == 1
    await asyncio.sleep(1.0)  # past MIN_REFETCH_S (set above)
    await accepted(app, idp.token("rsa-2"))
    await accepted(app, idp.token("rsa-2"))
    assert idp.requests[JWKS] == 2  # the unknown kid fetched once, then the cache
    assert "does not publish" in await rejected(app, idp.token("rsa-1"))


async def test_random_kids_do_not_make_it_fetch(app: Client, idp: Idp, tenant: Tenant,
                                                pool: asyncpg.Pool) -> None:
    await trust(pool, tenant, idp.issuer)
    await accepted(app, idp.token())
    for _ in range(20):
        forged = jwt.encode(idp.claims(), idp.private["rsa-1"][0], algorithm="RS256",
                            headers={"kid": uuid.uuid4().hex})
        assert "does not publish" in await rejected(app, forged)
    assert idp.requests[JWKS] == 1  # at most one refetch per 30 s, and the last was now


async def test_unreachable_issuer_is_503_until_it_answers(
        aiohttp_client: Any, aiohttp_server: ServerFactory, settings: Settings,
        tenant: Tenant, pool: asyncpg.Pool) -> None:
    # keys live 0.3 s here, and a failed fetch is retried after that long at most
    app = await aiohttp_client(create_app(app_settings(settings, oidc_jwks_cache_s=0.3)))
    provider = Idp()
    port = free_port()  # nothing listens there yet
    await trust(pool, tenant, provider.listening_on(port))
    r = await app.get("/api/v1/sessions", headers=bearer(provider.token()))
    assert r.status == 503, await r.text()
    assert int(r.headers["Retry-After"]) >= 1
    body = await r.text()
    assert json.loads(body)["code"] == "unavailable"
    assert "127.0.0.1" not in body and str(port) not in body and "Traceback" not in body
    await aiohttp_server(provider.app(), port=port)
    await asyncio.sleep(0.3)  # past the retry interval (the key lifetime, set above)
    await accepted(app, provider.token())


async def test_cached_keys_outlive_the_issuer(aiohttp_client: Any, aiohttp_server: ServerFactory,
                                              settings: Settings, tenant: Tenant,
                                              pool: asyncpg.Pool) -> None:
    app = await aiohttp_client(create_app(app_settings(settings, oidc_jwks_cache_s=0.3)))
    provider = Idp()
    server = await aiohttp_server(provider.app())
    assert server.port is not None
    await trust(pool, tenant, provider.listening_on(server.port))
    await accepted(app, provider.token())
    await server.close()
    await accepted(app, provider.token())  # from the cache
    await asyncio.sleep(0.3)  # past the keys' lifetime (set above): the refresh fails
    await accepted(app, provider.token())  # the keys it has are still good
    forged = jwt.encode(provider.claims(), provider.private["rsa-1"][0], algorithm="RS256",
                        headers={"kid": "unknown"})
    assert "does not publish" in await rejected(app, forged)


async def test_another_claim_names_the_user(app: Client, idp: Idp, tenant: Tenant,
                                            pool: asyncpg.Pool) -> None:
    await trust(pool, tenant, idp.issuer, oidc_user_claim="email")
    mine = await session_of(app, tenant, "alice@example.com")
    await session_of(app, tenant, "alice")  # the `sub`'s: not this user's
    token = idp.token(email="alice@example.com")
    assert [s["id"] for s in await accepted(app, token)] == [mine]
    assert "'email' claim" in await rejected(app, idp.token())
    assert "'email' claim" in await rejected(app, idp.token(email=["alice@example.com"]))


async def test_audience_picks_among_tenants_trusting_one_issuer(
        app: Client, idp: Idp, pool: asyncpg.Pool) -> None:
    first, second = await make_tenant(pool, "oa"), await make_tenant(pool, "ob")
    await trust(pool, first, idp.issuer, "app-a")
    await trust(pool, second, idp.issuer, "app-b")
    firsts, seconds = await session_of(app, first, "alice"), await session_of(app, second, "alice")
    token = idp.token(aud="app-b")
    assert [s["id"] for s in await accepted(app, token)] == [seconds]
    r = await app.get(f"/api/v1/sessions/{firsts}", headers=bearer(token))
    assert r.status == 404  # the other tenant's: as if it did not exist
    assert [s["id"] for s in await accepted(app, idp.token(aud=["app-a"]))] == [firsts]
    assert "several tenants" in await rejected(app, idp.token(aud=["app-a", "app-b"]))
    assert "another audience" in await rejected(app, idp.token(aud="app-c"))


async def test_no_oidc_ends_the_issuers_tokens(app: Client, idp: Idp, tenant: Tenant,
                                               pool: asyncpg.Pool, settings: Settings) -> None:
    await trust(pool, tenant, idp.issuer)
    token = idp.token()
    await accepted(app, token)
    proc = await asyncio.create_subprocess_exec(
        *cli_command(), "tenants", "update", tenant.name, "--no-oidc", cwd=ROOT,
        env=clean_env(DATABASE_URL=settings.database_url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert "OIDC issuer none" in out.decode(), out.decode()
    assert proc.returncode == 0, err.decode()
    await asyncio.sleep(CACHE_S)  # past the issuer-to-tenant cache's lifetime
    assert FOREIGN in await rejected(app, token)
