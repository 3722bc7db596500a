"""The demo page in headless Chromium (Debian's ``chromium``): two tabs, one streamed answer.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and the ``playwright``
package; the test is skipped, with the reason, where either is missing. Playwright's
own browser download is never used.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from chat_storage.runtime.settings import Settings
from chat_storage.server.routes.web import _csp
from tests.conftest import Tenant
from tests.web.chromium import NEEDS_CHROMIUM, TIMEOUT_MS, playwright_api

pytestmark = NEEDS_CHROMIUM


async def _sign_in(page: Any, base: str, tenant: Tenant, user: str) -> None:
    """Sign in with the tenant key, which the page trades for a user token (this test
    server mints no dev tokens, so the page asks for a key)."""
    await page.goto(base + "/?echo_delay_ms=120")
    await page.fill("#user-id", user)
    await page.fill("#api-key", tenant.key, timeout=TIMEOUT_MS)  # shown once asked for
    await page.click("#settings button")
    await page.wait_for_selector("#new-chat:not([disabled])", timeout=TIMEOUT_MS)


async def _two_tabs(context: Any, base: str, tenant: Tenant,
                    errors: list[str]) -> tuple[Any, Any, str]:
    """A writer tab that starts a chat and a reader tab that opens it from its list."""
    writer = await context.new_page()
    writer.on("pageerror", lambda e: errors.append(str(e)))
    await _sign_in(writer, base, tenant, "ada")
    await writer.click("#new-chat")
    await writer.wait_for_selector("#status.open", timeout=TIMEOUT_MS)
    session_id: str = writer.url.split("#", 1)[1]
    reader = await context.new_page()
    reader.on("pageerror", lambda e: errors.append(str(e)))
    await _sign_in(reader, base, tenant, "ada")
    await reader.click(f'#sessions li[data-id="{session_id}"]')
    await reader.wait_for_selector("#status.open", timeout=TIMEOUT_MS)
    return writer, reader, session_id


async def test_two_tabs_watch_one_streamed_answer(client: Any, tenant: Tenant,
                                                  browser: Any) -> None:
    base = f"http://{client.host}:{client.port}"
    context = await browser.new_context()
    errors: list[str] = []
    writer, reader, session_id = await _two_tabs(context, base, tenant, errors)

    words = " ".join(f"word{i}" for i in range(12))
    await writer.fill("#input", words)
    await writer.click("#send")
    expected = f"You said: {words}"
    # the reader sees the answer while it is still streaming, then complete
    streaming = await reader.wait_for_selector(
        'li[data-role="assistant"][data-status="streaming"]', timeout=TIMEOUT_MS)
    partial = await streaming.eval_on_selector(".content", "e => e.textContent")
    assert expected.startswith(partial) and partial != expected
    for page in (reader, writer):
        done = await page.wait_for_selector('li[data-role="assistant"][data-status="complete"]',
                                            timeout=TIMEOUT_MS)
        assert await done.eval_on_selector(".content", "e => e.textContent") == expected
        user = await page.wait_for_selector('li[data-role="user"]', timeout=TIMEOUT_MS)
        assert await user.eval_on_selector(".content", "e => e.textContent") == words

    # stored: the REST history has both, complete
    r = await client.get(f"/api/v1/sessions/{session_id}/messages", headers=tenant.headers)
    stored = [(m["role"], m["content"], m["status"]) for m in (await r.json())["data"]]
    assert stored == [("user", words, "complete"), ("assistant", expected, "complete")]

    # a fresh tab shows the history, and the chat got its title from the first message
    late = await context.new_page()
    await _sign_in(late, base, tenant, "ada")
    # a locator, not an element handle: a re-rendered list detaches earlier items
    item = late.locator(f'#sessions li[data-id="{session_id}"]')
    await playwright_api.expect(item).to_have_text(words, timeout=TIMEOUT_MS)
    await item.click(timeout=TIMEOUT_MS)
    done = await late.wait_for_selector('li[data-role="assistant"][data-status="complete"]',
                                        timeout=TIMEOUT_MS)
    assert await done.eval_on_selector(".content", "e => e.textContent") == expected
    assert errors == []
    await context.close()


async def test_a_file_attached_in_one_tab_downloads_in_another(client: Any, tenant: Tenant,
                                                                 browser: Any) -> None:
    base = f"http://{client.host}:{client.port}"
    context = await browser.new_context(accept_downloads=True)
    errors: list[str] = []
    writer, reader, session_id = await _two_tabs(context, base, tenant, errors)

    # the page hashes the file, uploads it to its presigned URL and completes it
    data = "minutes of the meeting, ünïcode too\n".encode() * 100
    await writer.set_input_files("#files", files=[
        {"name": "minutes.txt", "mimeType": "text/plain", "buffer": data}])
    await playwright_api.expect(writer.locator("#pending")).to_have_text(
        "📎 minutes.txt", timeout=TIMEOUT_MS)
    await writer.fill("#input", "see the minutes")
    await writer.click("#send")

    # the other tab shows the file on the message and downloads exactly those bytes
    link = reader.locator('li[data-role="user"] .files a')
    await playwright_api.expect(link).to_have_text("📎 minutes.txt", timeout=TIMEOUT_MS)
    async with reader.expect_download(timeout=TIMEOUT_MS) as caught:
        await link.click()
    download = await caught.value
    assert download.suggested_filename == "minutes.txt"
    assert await asyncio.to_thread(Path(await download.path()).read_bytes) == data

    # stored: linked to the message, as the API sees it
    r = await client.get(f"/api/v1/sessions/{session_id}/messages", headers=tenant.headers)
    [question] = [m for m in (await r.json())["data"] if m["role"] == "user"]
    [named] = question["attachments"]
    assert (named["name"], named["size"]) == ("minutes.txt", len(data))
    assert "attachments" not in question["metadata"]  # the message object lists them
    r = await client.get(f"/api/v1/sessions/{session_id}/attachments/{named['id']}",
                         headers=tenant.headers)
    attachment = await r.json()
    assert (attachment["status"], attachment["message_id"]) == ("ready", question["id"])
    assert errors == []
    await context.close()


async def test_page_is_served_with_a_strict_policy(client: Any) -> None:
    r = await client.get("/")
    assert r.status == 200 and r.content_type == "text/html"
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    r = await client.get("/web/chat-storage.js")  # the older address: re-exports the package
    assert r.status == 200 and r.content_type == "text/javascript"
    assert 'from "./client/index.js"' in await r.text()
    # the page imports the JS client package (clients/js/src) from /web/client/
    assert 'from "/web/client/index.js"' in await (await client.get("/web/app.js")).text()
    for name in ("index.js", "client.js", "answer.js"):
        r = await client.get(f"/web/client/{name}")
        assert r.status == 200 and r.content_type == "text/javascript"
    assert (await client.get("/web/client/index.d.ts")).status == 404
    assert (await client.get("/web/client/..%2Fpackage.json")).status == 404
    assert (await client.get("/web/../server/app.py")).status == 404
    assert (await client.get("/web/nope.js")).status == 404


async def test_swagger_ui_renders_every_operation(client: Any, browser: Any) -> None:
    """/docs is served from local files and its UI can read our OpenAPI 3.1 document."""
    base = f"http://{client.host}:{client.port}"
    document = await (await client.get("/openapi.json")).json()
    operations = sum(len(methods) for methods in document["paths"].values())
    page = await browser.new_page()
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(base) else outside.append(r.url))
    await page.goto(base + "/docs")
    await page.wait_for_selector(".opblock", timeout=TIMEOUT_MS)
    assert await page.locator(".opblock").count() == operations
    assert await page.locator(".errors-wrapper").count() == 0
    assert outside == []


def test_the_policy_lets_uploads_reach_the_object_store() -> None:
    local = Settings()
    assert "connect-src 'self';" in _csp(local)
    minio = Settings(s3_bucket="b", s3_endpoint_url="http://minio:9000",
                     s3_public_url="http://127.0.0.1:9000")
    assert "connect-src 'self' http://127.0.0.1:9000;" in _csp(minio)
    aws = Settings(s3_bucket="b")
    assert "connect-src 'self' https://*.amazonaws.com;" in _csp(aws)
