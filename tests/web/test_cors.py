"""CORS in headless Chromium: a page on another origin calls the API with its key.

Two origins on loopback, told apart by their ports: a throwaway page server and the
API. The page's ``fetch`` sends ``X-Api-Key``, so the browser preflights it; it works
only if the preflight is answered without a key and the page's origin is listed, and
the page reads ``X-Request-ID`` only if it is exposed. The same list lets the page open
a WebSocket, and refuses one to a page not listed. Skipped like tests/web/test_page.py
where Debian's chromium or playwright is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from tests.conftest import Tenant

IN_CI = bool(os.environ.get("CI"))
if IN_CI:
    import playwright.async_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.skipif(shutil.which("chromium") is None and not IN_CI,
                                reason="Debian's chromium is not installed")

PAGE = "<!doctype html><title>another origin</title><p>calls the API from here</p>"
# runs in the page: a preflighted POST, then a GET that fails; what the page can read
CALL = """async ([api, key]) => {
  const out = {};
  try {
    const r = await fetch(api + "/api/v1/sessions", {method: "POST", body: '{"user_id":"web"}',
      headers: {"X-Api-Key": key, "Content-Type": "application/json",
                "X-Request-ID": "from-the-page"}});
    out.created = {status: r.status, requestId: r.headers.get("X-Request-ID"),
                   location: r.headers.get("Location"),
                   remaining: r.headers.get("RateLimit-Remaining"), body: await r.json()};
    const missing = await fetch(api + r.headers.get("Location") + "-nope",
                                {headers: {"X-Api-Key": key}});
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

    async with _page_at(browser, listed) as page:
        out = await page.evaluate(CALL, [api, tenant.key])
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
        out = await page.evaluate(CALL, [api, tenant.key])
        # and its WebSocket is refused (403 before the upgrade), ticket or not
        assert await page.evaluate(OPEN_WS, await _ws_url(client, tenant)) == "refused"
    assert "created" not in out and "Failed to fetch" in out["error"], out
    assert await _web_sessions(client, tenant) == 1
