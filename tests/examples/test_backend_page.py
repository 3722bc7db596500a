"""examples/backend's page in headless Chromium: it opens a chat through the backend,
watches it with chat-storage's browser client (its origin allowed there), and shows the
answer as its tokens arrive over the WebSocket; the tenant key never reaches it.
Skipped like tests/web where Debian's chromium or playwright is missing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import TEST_SECRET_KEY, Tenant
from tests.examples.conftest import EXAMPLES, example_env
from tests.examples.test_backend import ANSWER
from tests.support.procs import Server, free_port
from tests.web.chromium import NEEDS_CHROMIUM, TIMEOUT_MS, playwright_api
from tests.web.conftest import ARGS, CHROMIUM

pytestmark = NEEDS_CHROMIUM


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's chromium, headless, as tests/web start it."""
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def site(database_url: str, tenant: Tenant, tmp_path: Path) -> AsyncIterator[str]:
    """chat-storage allowing the backend's origin, and the backend; the backend's URL."""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    server = Server(database_url, tmp_path / f"server-{secrets.token_hex(3)}.log",
                    env={"CHAT_SECRET_KEY": TEST_SECRET_KEY, "CHAT_ALLOWED_ORIGINS": origin})
    await server.start()
    log = (tmp_path / "backend.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "backend" / "app.py"), "--port", str(port),
        env=example_env(server, tenant), stdout=log, stderr=asyncio.subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            while True:
                assert proc.returncode is None, (tmp_path / "backend.log").read_text()
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(origin + "/") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield origin
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        log.close()
        await server.kill()


async def test_the_page_shows_the_answer_as_it_streams(site: str, browser: Any,
                                                       tenant: Tenant) -> None:
    page = await (await browser.new_context()).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    headers: list[dict[str, str]] = []
    page.on("request", lambda r: headers.append(r.headers))
    deltas: list[str] = []

    def on_socket(ws: Any) -> None:
        def on_frame(payload: str | bytes) -> None:
            frame = json.loads(payload)
            if frame.get("type") == "stream.delta":
                deltas.append(frame["delta"])
        ws.on("framereceived", on_frame)

    page.on("websocket", on_socket)
    await page.goto(site + "/")
    await page.wait_for_selector("body[data-state=open]", timeout=TIMEOUT_MS)
    await page.click("button")
    assistant = page.locator("p.assistant")
    await playwright_api.expect(assistant).to_have_text(f"assistant: {ANSWER}",
                                                        timeout=TIMEOUT_MS)
    await playwright_api.expect(page.locator("p.user")).to_have_text(
        "user: What is a zebra?")
    assert deltas and "".join(deltas) in ANSWER  # it watched live, token by token
    assert not errors, errors
    assert all(tenant.key not in json.dumps(h) for h in headers)
