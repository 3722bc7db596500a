"""CORS in headless Chromium: a page on another origin calls the API with a user token
its backend (here, the test) minted, as docs/auth.md tells a front-end developer to.

Origins on loopback, told apart by their ports: throwaway page servers and the API.
The page's ``fetch`` sends ``Authorization: Bearer``, so the browser preflights it; it
works only if the preflight is answered without a credential and the page's origin is
listed (``CHAT_CORS_ORIGINS`` or the token's tenant's own list), and the page reads
``X-Request-ID``, ``RateLimit-*`` and ``Location`` only if they are exposed. The same
rule lets the page open a WebSocket with a ticket, and refuses one to a page not
listed. The token reaches its own user only. Skipped like tests/web/test_page.py where
Debian's chromium or playwright is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from tests.conftest import Tenant
from tests.support.origins import listed
from tests.web.chromium import NEEDS_CHROMIUM

pytestmark = NEEDS_CHROMIUM

PAGE = "<!doctype html><title>another origin</title><p>calls the API from here</p>"
# runs in the page: a preflighted POST, then a GET that fails; what the page can read
CALL = """async ([api, token]) => {
  const out = {};
  try {
    const r = await fetch(api + "/api/v1/sessions", {method: "POST", body: '{"user_id":"web"}',
      headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json",
                "X-Request-ID": "from-the-page"}});
    out.created = {status: r.status, requestId: r.headers.get("X-Request-ID"),
                   location: r.headers.get("Location"),
                   remaining: r.headers.get("RateLimit-Remaining"), body: await r.json()};
    const missing = await fetch(api + r.headers.get("Location") + "-nope",
                                {headers: {"Authorization": "Bearer " + token}});
    out.missing = {status: missing.status, requestId: missing.headers.get("X-Request-ID")};
  } catch (e) {
    out.error = String(e);
  }
  return out;
}"""
# runs in the page: open a WebSocket, say whether the server let it
OPEN_WS = """(url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.onopen = () => { ws.close(); resolve("open"); };
  ws.onerror = () => resolve("refused");
  setTimeout(() => resolve("timeout"), 10000);
})"""


async def _page_origin(aiohttp_server: Any) -> str:
    """A server of one static page: the other origin."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server = await aiohttp_server(app, host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}"


@contextlib.asynccontextmanager
async def _page_at(browser: Any, origin: str) -> AsyncIterator[Any]:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(origin + "/")
        yield page
    finally:
        await context.close()


async def _ws_url(client: Any, tenant: Tenant) -> str:
    """A WebSocket URL with a fresh ticket, for a page to open."""
    r = await client.post("/api/v1/sessions", json={"user_id": "ws"}, headers=tenant.headers)
    sid = (await r.json())["id"]
    r = await client.post(f"/api/v1/sessions/{sid}/ws-tickets", headers=tenant.headers)
    ticket = (await r.json())["ticket"]
    return f"ws://127.0.0.1:{client.port}/api/v1/sessions/{sid}/ws?ticket={ticket}"


async def _token(client: Any, tenant: Tenant, user_id: str = "web") -> str:
    """What the page's backend does: mint a user token with the tenant key."""
    r = await client.post("/api/v1/tokens", json={"user_id": user_id, "ttl_s": 300},
                          headers=tenant.headers)
    assert r.status == 201, await r.text()
    token: str = (await r.json())["token"]
    return token


async def _web_sessions(client: Any, tenant: Tenant) -> int:
    r = await client.get("/api/v1/sessions?user_id=web", headers=tenant.headers)
    assert r.status == 200
    return len((await r.json())["data"])


async def test_a_listed_origin_calls_the_api_and_reads_exposed_headers(
    aiohttp_client: Any, aiohttp_server: Any, settings: Settings, tenant: Tenant,
    browser: Any,
) -> None:
    listed = await _page_origin(aiohttp_server)
    unlisted = await _page_origin(aiohttp_server)
    client = await aiohttp_client(create_app(dataclasses.replace(
        settings, cors_origins=(listed,))))
    api = f"http://127.0.0.1:{client.port}"
    assert listed != api and unlisted != api  # three origins: other ports

    token = await _token(client, tenant)
    async with _page_at(browser, listed) as page:
        out = await page.evaluate(CALL, [api, token])
        # the WebSocket's Origin check lets the same page in
        assert await page.evaluate(OPEN_WS, await _ws_url(client, tenant)) == "open"
    assert "error" not in out, out
    created = out["created"]
    assert created["status"] == 201
    assert created["body"]["user_id"] == "web"
    assert created["requestId"] == "from-the-page"  # exposed: the page can read it
    assert created["location"] == f"/api/v1/sessions/{created['body']['id']}"
    assert created["remaining"] is not None
    # an error answer is readable too: its status and its request id
    assert out["missing"]["status"] in (400, 404)
    assert out["missing"]["requestId"]
    assert await _web_sessions(client, tenant) == 1

    # not listed: the browser refuses the preflight's answer and never sends the POST
    async with _page_at(browser, unlisted) as page:
        out = await page.evaluate(CALL, [api, token])
        # and its WebSocket is refused (403 before the upgrade), ticket or not
        assert await page.evaluate(OPEN_WS, await _ws_url(client, tenant)) == "refused"
    assert "created" not in out and "Failed to fetch" in out["error"], out
    assert await _web_sessions(client, tenant) == 1


# runs in the page, as user A with A's token: what it can and cannot reach of user B,
# then a WebSocket by a ticket it asks for itself
AS_A_USER = """async ([api, token, otherSession]) => {
  const auth = {"Authorization": "Bearer " + token};
  const out = {};
  try {
    const made = await fetch(api + "/api/v1/sessions", {method: "POST",
      body: '{"user_id":"ada"}', headers: {...auth, "Content-Type": "application/json"}});
    out.made = {status: made.status, location: made.headers.get("Location"),
                requestId: made.headers.get("X-Request-ID"),
                limit: made.headers.get("RateLimit-Limit"), body: await made.json()};
    const theirs = await fetch(api + "/api/v1/sessions/" + otherSession, {headers: auth});
    out.theirs = {status: theirs.status, code: (await theirs.json()).code};
    const listB = await fetch(api + "/api/v1/sessions?user_id=bob", {headers: auth});
    out.listB = listB.status;
    const mine = await fetch(api + "/api/v1/sessions", {headers: auth});
    out.mine = (await mine.json()).data.map((s) => s.user_id);
    const t = await fetch(api + "/api/v1/sessions/" + out.made.body.id + "/ws-tickets",
                          {method: "POST", headers: auth});
    const ticket = (await t.json()).ticket;
    const wsBase = api.replace("http", "ws");
    out.ws = await new Promise((resolve) => {
      const ws = new WebSocket(wsBase + "/api/v1/sessions/" + out.made.body.id +
                               "/ws?ticket=" + encodeURIComponent(ticket));
      ws.onopen = () => { ws.close(); resolve("open"); };
      ws.onerror = () => resolve("refused");
      setTimeout(() => resolve("timeout"), 10000);
    });
  } catch (e) {
    out.error = String(e);
  }
  return out;
}"""


async def test_a_tenants_page_reaches_its_user_and_no_other(
    aiohttp_client: Any, aiohttp_server: Any, settings: Settings, pool: asyncpg.Pool,
    tenant: Tenant, other_tenant: Tenant, browser: Any,
) -> None:
    own = await _page_origin(aiohttp_server)  # listed by the tenant, not CHAT_CORS_ORIGINS
    others = await _page_origin(aiohttp_server)  # listed by another tenant only
    client = await aiohttp_client(create_app(dataclasses.replace(settings, cors_origins=())))
    api = f"http://127.0.0.1:{client.port}"
    r = await client.post("/api/v1/sessions", json={"user_id": "bob"}, headers=tenant.headers)
    bobs = (await r.json())["id"]
    ada = await _token(client, tenant, "ada")
    async with listed(pool, tenant, own), listed(pool, other_tenant, others):
        async with _page_at(browser, own) as page:
            out = await page.evaluate(AS_A_USER, [api, ada, bobs])
        assert "error" not in out, out
        made = out["made"]
        assert made["status"] == 201 and made["body"]["user_id"] == "ada"
        assert made["location"] == f"/api/v1/sessions/{made['body']['id']}"
        assert made["requestId"] and made["limit"]  # exposed headers, readable
        # B's session does not exist for A, nor may A list B's
        assert out["theirs"] == {"status": 404, "code": "not_found"}
        assert out["listB"] == 403
        assert out["mine"] == ["ada"]
        assert out["ws"] == "open"

        # a page another tenant lists: its preflight passes (no credential tells whose
        # page it is), but this tenant's answers are not readable there
        async with _page_at(browser, others) as page:
            out = await page.evaluate(AS_A_USER, [api, ada, bobs])
            refused = await page.evaluate(OPEN_WS, await _ws_url(client, tenant))
        assert set(out) == {"error"} and "Failed to fetch" in out["error"], out
        assert refused == "refused"
    # the other tenant's page did send its POST (the preflight passed) and could not
    # read the answer: CORS keeps answers from pages, the token is what allows acting
    r = await client.get("/api/v1/sessions?user_id=ada", headers=tenant.headers)
    assert len((await r.json())["data"]) == 2
