from __future__ import annotations

from typing import Any

from tests.conftest import Tenant


async def test_create_session_and_message(client: Any, tenant: Tenant) -> None:
    r = await client.post("/api/v1/sessions", json={"user_id": "u1", "title": "hi"},
                          headers=tenant.headers)
    assert r.status == 201, await r.text()
    session = await r.json()
    r = await client.post(f"/api/v1/sessions/{session['id']}/messages",
                          json={"role": "user", "content": "hello"}, headers=tenant.headers)
    assert r.status == 201, await r.text()
    msg = await r.json()
    assert msg["seq"] == 1
    assert msg["content"] == "hello"
    assert r.headers["X-Request-ID"]
    assert r.headers["RateLimit-Limit"] == "10000"
