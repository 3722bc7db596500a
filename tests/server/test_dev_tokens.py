"""``POST /dev/tokens``: the demo page's user tokens on a developer's machine, served
only when asked for (or with the embedded database) and only to local callers."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import asyncpg
import jwt
import pytest

from chat_storage.runtime.settings import DEV_TENANT, Settings
from chat_storage.server.app import create_app
from chat_storage.server.routes.dev_tokens import is_loopback

PATH = "/dev/tokens"


@pytest.fixture
async def dev_client(aiohttp_client: Any, settings: Settings) -> Any:
    return await aiohttp_client(create_app(dataclasses.replace(settings, dev_tokens=True)))


async def test_not_served_unless_asked_for(client: Any) -> None:
    assert not Settings(database_url="postgresql://x/y").serves_dev_tokens
    assert Settings().serves_dev_tokens  # the embedded database: a developer's machine
    r = await client.post(PATH, json={"user_id": "ada"})
    assert r.status == 404


async def test_mints_a_token_of_the_dev_tenant_that_reaches_its_user(
    dev_client: Any, pool: asyncpg.Pool,
) -> None:
    before = time.time()
    r = await dev_client.post(PATH, json={"user_id": "ada", "ttl_s": 60})
    assert r.status == 201, await r.text()
    assert r.headers["Cache-Control"] == "no-store"
    minted = await r.json()
    assert (minted["user_id"], minted["scopes"]) == ("ada", ["read", "write", "stream"])
    claims = jwt.decode(minted["token"], options={"verify_signature": False})
    assert before + 59 <= claims["exp"] <= time.time() + 61
    bearer = {"Authorization": f"Bearer {minted['token']}"}
    r = await dev_client.post("/api/v1/sessions", json={"user_id": "ada"}, headers=bearer)
    assert r.status == 201 and (await r.json())["user_id"] == "ada"
    r = await dev_client.get("/api/v1/sessions?user_id=someone-else", headers=bearer)
    assert r.status == 403  # a user token, not the tenant: one user only
    r = await dev_client.post("/api/v1/tokens", json={"user_id": "x"}, headers=bearer)
    assert r.status == 403  # and it cannot mint further tokens
    # the tenant is the first run's (made here if missing)
    name = await pool.fetchval("SELECT name FROM tenants WHERE id = $1",
                               uuid.UUID(claims["tid"]))
    assert name == DEV_TENANT


async def test_refuses_bad_bodies(dev_client: Any) -> None:
    for body in ({"user_id": "ada", "ttl_s": 59}, {"user_id": ""}, {"user_id": "a", "x": 1},
                 {"user_id": "a", "ttl_s": 86_401}):
        r = await dev_client.post(PATH, json=body)
        assert r.status == 400, body


async def test_only_this_machine_and_this_servers_pages(dev_client: Any) -> None:
    own = f"http://127.0.0.1:{dev_client.port}"
    ok = await dev_client.post(PATH, json={"user_id": "a"}, headers={"Origin": own})
    assert ok.status == 201
    # a page elsewhere, even one served from this machine, may not mint
    for origin in ("https://evil.example", f"http://127.0.0.1:{dev_client.port + 1}", "null"):
        r = await dev_client.post(PATH, json={"user_id": "a"}, headers={"Origin": origin})
        assert r.status == 403, origin
        assert not {h for h in r.headers if h.lower().startswith("access-control-")}
    # a name that resolves here by DNS rebinding still names itself in Host
    r = await dev_client.post(PATH, json={"user_id": "a"},
                              headers={"Host": f"rebound.example:{dev_client.port}"})
    assert r.status == 403
    r = await dev_client.post(PATH, json={"user_id": "a"},
                              headers={"Host": f"localhost:{dev_client.port}"})
    assert r.status == 201


def test_loopback_addresses_and_names() -> None:
    # the peer of a real socket here is always loopback: the other cases by value
    for address in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(address), address
    for address in ("192.0.2.1", "10.0.0.1", "::ffff:192.0.2.1", "example.com", "", None,
                    "0.0.0.0"):
        assert not is_loopback(address), address
