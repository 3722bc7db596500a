"""docs/auth.md's Python backend example, run as written against a real server: its
``chat_token`` route mints a token that reaches its user's sessions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.conftest import Tenant

DOC = Path(__file__).resolve().parent.parent / "docs/auth.md"
MARKER = "<!-- executed: tests/test_auth_doc.py runs the next python block -->"


def example() -> str:
    """The python block right after the marker."""
    text = DOC.read_text()
    after = text[text.index(MARKER) + len(MARKER):]
    found = re.match(r"\s*```python\n(.*?)\n```", after, re.S)
    assert found is not None, "the marker must be followed by a python block"
    return found.group(1)


async def test_the_backend_example_mints_a_working_token(
    client: Any, aiohttp_client: Any, tenant: Tenant,
) -> None:
    base = f"http://{client.host}:{client.port}"

    async def current_user(request: web.Request) -> str:
        return request.headers["X-Signed-In-As"]  # stands for the app's own sign-in

    namespace: dict[str, Any] = {"current_user": current_user, "CHAT_STORAGE_URL": base,
                                 "CHAT_STORAGE_KEY": tenant.key}
    exec(compile(example(), str(DOC), "exec"), namespace)  # our own document, as written
    backend = web.Application()
    backend.router.add_get("/my-app/chat-token", namespace["chat_token"])
    app_client = await aiohttp_client(backend)

    r = await app_client.get("/my-app/chat-token", headers={"X-Signed-In-As": "ada"})
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    token = (await r.json())["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    r = await client.post("/api/v1/sessions", json={"user_id": "ada"}, headers=bearer)
    assert r.status == 201
    r = await client.post("/api/v1/sessions", json={"user_id": "bob"}, headers=bearer)
    assert r.status == 403
