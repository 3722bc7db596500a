"""Helpers of the tests that call the API with a bearer token (user tokens, OIDC)."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.conftest import Tenant

Client = TestClient  # type: ignore[type-arg]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def session_of(client: Client, tenant: Tenant, user_id: str) -> str:
    """A new session of ``user_id``, made with the tenant's key."""
    r = await client.post("/api/v1/sessions", json={"user_id": user_id}, headers=tenant.headers)
    assert r.status == 201
    return str((await r.json())["id"])


async def rejected(client: Client, token: str) -> str:
    """The message of the 401 that ``token`` gets, with the invalid_token challenge."""
    r = await client.get("/api/v1/sessions", headers=bearer(token))
    assert r.status == 401, await r.text()
    assert r.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    body = await r.json()
    assert body["code"] == "unauthorized"
    return str(body["message"])
