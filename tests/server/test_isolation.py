"""Tenant isolation, for every endpoint that takes an id in its path.

The endpoints are enumerated from the app's route tables, so a route added later is
covered without touching this file — unless it needs a request body or a path id this
file has no sample for, and then its test fails saying what to add.

Tenant B calls each endpoint with tenant A's real ids:
- a path with a session, message or other resource id answers 404, exactly as for an
  id that does not exist;
- a ``/users/{user_id}/…`` path (user ids are the tenant's own names, not secrets)
  answers for B's own, empty data: nothing of A's is shown, changed or erased.
After every call, A's session and messages are checked to be untouched.
"""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.routing import ENDPOINTS_KEY, Endpoint
from tests.conftest import Tenant

# A valid body for each endpoint that takes one: an invalid body could be refused
# (400) before the tenant check, and the test would prove nothing.
SAMPLE_BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/api/v1/sessions/{session_id}"):
        {"title": "taken over", "favorite": True, "metadata": {"owner": "b"}, "ttl_s": 60},
    ("POST", "/api/v1/sessions/{session_id}/messages"):
        {"role": "user", "content": "injected by b"},
    ("POST", "/api/v1/sessions/{session_id}/messages/batch"):
        {"messages": [{"role": "user", "content": "injected by b"}]},
    ("PATCH", "/api/v1/sessions/{session_id}/messages/{message_id}"):
        {"metadata": {"owner": "b"}, "feedback": {"rating": -1, "comment": "b was here"}},
    ("POST", "/api/v1/sessions/{session_id}/attachments"):
        {"name": "a.txt", "mime": "text/plain", "size": 5, "sha256": "0" * 64},
}

USER_SCOPED = {"user_id"}  # path ids that name a user inside the caller's own tenant
_PARAM = re.compile(r"\{(\w+)(?::[^{}]*)?\}")


def api_endpoints() -> list[Endpoint]:
    """The ``/api/v1`` endpoints with a path parameter (the app is built, not started)."""
    app = create_app(Settings(database_url="postgresql://127.0.0.1/unused"))
    return [ep for ep in app[ENDPOINTS_KEY]
            if ep.path.startswith("/api/v1/") and _PARAM.search(ep.path)]


ENDPOINTS = api_endpoints()


def endpoint_id(ep: Endpoint) -> str:
    return f"{ep.method} {ep.path}"


class World:
    """Tenant A's data: a session with one message (with feedback), and its snapshot."""

    def __init__(self, client: Any, a: Tenant) -> None:
        self.client = client
        self.a = a
        self.user_id = f"iso-{secrets.token_hex(4)}"
        self.secret = f"secret-of-a-{secrets.token_hex(6)}"
        self.ids: dict[str, str] = {}
        self.snapshot: tuple[Any, Any] | None = None

    async def setup(self) -> None:
        r = await self.client.post("/api/v1/sessions", headers=self.a.headers,
                                   json={"user_id": self.user_id, "title": self.secret})
        assert r.status == 201, await r.text()
        self.ids["session_id"] = (await r.json())["id"]
        self.ids["user_id"] = self.user_id
        r = await self.client.post(f"/api/v1/sessions/{self.ids['session_id']}/messages",
                                   headers=self.a.headers,
                                   json={"role": "user", "content": self.secret})
        assert r.status == 201, await r.text()
        self.ids["message_id"] = (await r.json())["id"]
        self.snapshot = await self.state()

    async def state(self) -> tuple[Any, Any]:
        """What A sees of its session and messages."""
        sid = self.ids["session_id"]
        r = await self.client.get(f"/api/v1/sessions/{sid}", headers=self.a.headers)
        assert r.status == 200, f"A lost its session: {r.status} {await r.text()}"
        session = await r.json()
        r = await self.client.get(f"/api/v1/sessions/{sid}/messages", headers=self.a.headers)
        assert r.status == 200, await r.text()
        return session, (await r.json())["data"]

    async def value_for(self, name: str, ep: Endpoint) -> str:
        """A's real id for path parameter ``name``, made on first use."""
        if name not in self.ids:
            if name in ("aid", "attachment_id"):
                self.ids[name] = await self._attachment()
            else:
                pytest.fail(f"{endpoint_id(ep)}: no sample value for path parameter {name!r}; "
                            "teach World.value_for in tests/server/test_isolation.py to make one")
        return self.ids[name]

    async def _attachment(self) -> str:
        sid = self.ids["session_id"]
        body = SAMPLE_BODIES[("POST", "/api/v1/sessions/{session_id}/attachments")]
        r = await self.client.post(f"/api/v1/sessions/{sid}/attachments",
                                   headers=self.a.headers, json=body)
        assert r.status == 201, await r.text()
        attachment_id: str = (await r.json())["attachment"]["id"]
        return attachment_id


def sample_body(ep: Endpoint) -> Any:
    if ep.body is None:
        return None
    key = (ep.method, ep.path)
    if key not in SAMPLE_BODIES:
        pytest.fail(f"{endpoint_id(ep)} takes a body: add a valid sample to SAMPLE_BODIES "
                    "in tests/server/test_isolation.py")
    body = SAMPLE_BODIES[key]
    ep.body.model_validate(body)  # a stale sample would be refused before the tenant check
    return body


async def call(client: Any, ep: Endpoint, path: str, tenant: Tenant) -> tuple[int, str]:
    """Call ``ep`` at ``path`` as ``tenant``; return the status and the body (or '')."""
    if path.endswith("/ws"):
        try:
            ws = await client.ws_connect(path, headers=tenant.headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, ""
        await ws.close()
        return 101, ""
    body = sample_body(ep)
    kwargs: dict[str, Any] = {"headers": tenant.headers}
    if body is not None:
        kwargs["json"] = body
    async with client.request(ep.method, path, **kwargs) as r:
        if r.status == 200 and r.content_type == "text/event-stream":
            return r.status, ""  # a live stream would never end; its status says enough
        return r.status, await r.text()


def test_the_enumeration_sees_the_routes() -> None:
    # guards against a filter that silently covers nothing
    seen = {endpoint_id(ep) for ep in ENDPOINTS}
    assert "GET /api/v1/sessions/{session_id}" in seen
    assert "POST /api/v1/sessions/{session_id}/messages" in seen


@pytest.mark.parametrize("ep", ENDPOINTS, ids=endpoint_id)
async def test_another_tenant_cannot_reach_tenant_a(
    client: Any, tenant: Tenant, other_tenant: Tenant, ep: Endpoint
) -> None:
    served = {(e.method, e.path): e for e in client.app[ENDPOINTS_KEY]}
    ep = served[(ep.method, ep.path)]
    world = World(client, tenant)
    await world.setup()
    names = _PARAM.findall(ep.path)
    values = {name: await world.value_for(name, ep) for name in names}
    path = _PARAM.sub(lambda m: values[m.group(1)], ep.path)

    status, text = await call(client, ep, path, other_tenant)

    if set(names) <= USER_SCOPED:
        assert status < 400, f"{endpoint_id(ep)} as B: {status} {text}"
    else:
        assert status == 404, f"{endpoint_id(ep)} with A's ids as B: {status} {text}"
        # exactly as for ids that do not exist
        fake = {name: str(uuid.uuid4()) for name in names}
        fake_path = _PARAM.sub(lambda m: fake[m.group(1)], ep.path)
        fake_status, fake_text = await call(client, ep, fake_path, other_tenant)
        assert fake_status == status
        if text:
            assert _message(text, values) == _message(fake_text, fake)
    # an error body names the path it was asked (so A's id, from B's own request)
    shown = (world.secret, world.ids["session_id"], world.ids["message_id"]) if status < 400 \
        else (world.secret,)
    for secret in shown:
        assert secret not in text, f"{endpoint_id(ep)} as B shows A's {secret}"
    assert await world.state() == world.snapshot, f"{endpoint_id(ep)} as B changed A's data"


def _message(text: str, ids: dict[str, str]) -> str:
    """The error message with the given ids blanked out."""
    message: str = orjson.loads(text)["message"]
    for value in ids.values():
        message = message.replace(value, "<id>")
    return message
