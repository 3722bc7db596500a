"""The demo page's credential in headless Chromium: a user token in sessionStorage,
renewed before it expires, and never the tenant key (issue 11, item 6).

The page's clock is playwright's (``page.clock``): the test jumps 50 s ahead instead of
waiting for a 60-second token to near its end. Skipped like tests/web/test_page.py
where Debian's chromium or playwright is missing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import jwt

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from tests.conftest import Tenant
from tests.web.chromium import NEEDS_CHROMIUM, TIMEOUT_MS, playwright_api

pytestmark = NEEDS_CHROMIUM
SLOT = "chat-storage.token"
# everything the page keeps in either storage, as {"local": {...}, "session": {...}}
STORED = """() => {
  const dump = (s) => Object.fromEntries(Array.from({length: s.length}, (_, i) => s.key(i))
                                          .map((k) => [k, s.getItem(k)]));
  return {local: dump(localStorage), session: dump(sessionStorage)};
}"""
TOKEN_CHANGED = f"(old) => JSON.parse(sessionStorage.getItem('{SLOT}') || 'null')?.token !== old"


async def _pause_and_jump(page: Any, seconds: float) -> None:
    """Stop the page's clock and jump ``seconds`` ahead, firing what falls due on the way:
    no timer fires later by itself, so what is seen next happened within those seconds."""
    now_ms = await page.evaluate("Date.now()")
    await page.clock.pause_at(dt.datetime.fromtimestamp((now_ms + 1000) / 1000, dt.UTC))
    await page.clock.fast_forward(int(seconds * 1000) - 1000)


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def _kept_token(page: Any) -> str:
    stored = await page.evaluate(STORED)
    token: str = json.loads(stored["session"][SLOT])["token"]
    return token


async def _watched_page(browser: Any) -> tuple[Any, list[str], list[Any]]:
    """A new page whose clock the test drives, with its script errors and requests."""
    page = await (await browser.new_context()).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r))
    await page.clock.install()
    return page, errors, requests


async def _credentials_sent(requests: list[Any]) -> list[tuple[str, str]]:
    """(path, credential header) of every API request the page made."""
    out = []
    for request in requests:
        if "/api/v1/" not in request.url:
            continue
        headers = await request.all_headers()
        credential = "key" if "x-api-key" in headers else headers.get("authorization", "")
        out.append((request.url.split("/api/v1/", 1)[1].split("?")[0], credential))
    return out


async def test_the_key_is_traded_for_a_token_and_kept_nowhere(client: Any, tenant: Tenant,
                                                              browser: Any) -> None:
    base = f"http://{client.host}:{client.port}"
    page, errors, requests = await _watched_page(browser)
    await page.goto(base + "/?token_ttl_s=60")
    await page.fill("#user-id", "grace")
    await page.fill("#api-key", tenant.key, timeout=TIMEOUT_MS)
    await page.click("#settings button")
    await page.wait_for_selector("#new-chat:not([disabled])", timeout=TIMEOUT_MS)
    await page.click("#new-chat")
    await page.wait_for_selector("#status.open", timeout=TIMEOUT_MS)  # WebSocket by ticket

    # neither storage has the key, nor its secret part; the field was emptied
    secret = tenant.key.split("_", 2)[2]
    stored = await page.evaluate(STORED)
    assert tenant.key not in json.dumps(stored) and secret not in json.dumps(stored)
    assert await page.input_value("#api-key") == ""
    first = await _kept_token(page)
    claims = _claims(first)
    assert (claims["sub"], claims["tid"], claims["exp"] - claims["iat"]) == (
        "grace", str(tenant.id), 60)
    # the key went out once, to be traded; every other call carried the token
    sent = await _credentials_sent(requests)
    assert sent[0] == ("tokens", "key")
    assert [c for _, c in sent[1:]] == [f"Bearer {first}"] * (len(sent) - 1)
    assert {"sessions", "tokens"} <= {path.split("/")[0] for path, _ in sent}

    # 48 s into its 60 s the page asks for the key again, and trades it again
    await _pause_and_jump(page, 50)
    await playwright_api.expect(page.locator("#key-label")).to_be_visible(timeout=TIMEOUT_MS)
    await playwright_api.expect(page.locator("#auth-note")).to_contain_text("expires soon")
    await page.fill("#api-key", tenant.key)
    await page.click("#settings button")
    await page.wait_for_function(TOKEN_CHANGED, arg=first, timeout=TIMEOUT_MS)
    assert _claims(await _kept_token(page))["sub"] == "grace"
    stored = await page.evaluate(STORED)
    assert secret not in json.dumps(stored)
    assert await page.locator("#key-label").is_hidden()
    assert errors == []
    await page.context.close()


async def test_a_dev_token_is_renewed_before_it_expires(
    aiohttp_client: Any, settings: Settings, browser: Any,
) -> None:
    client = await aiohttp_client(create_app(dataclasses.replace(settings, dev_tokens=True)))
    base = f"http://{client.host}:{client.port}"
    page, errors, requests = await _watched_page(browser)
    # no key asked for: the page mints its own token on this machine
    await page.goto(base + "/?token_ttl_s=60&echo_delay_ms=10")
    await page.wait_for_selector("#new-chat:not([disabled])", timeout=TIMEOUT_MS)
    assert await page.locator("#key-label").is_hidden()
    first = await _kept_token(page)
    assert _claims(first)["sub"] == "demo-user"
    await page.click("#new-chat")
    await page.wait_for_selector("#status.open", timeout=TIMEOUT_MS)

    await _pause_and_jump(page, 50)  # renewed at 48 s, before the 60 s are up
    await page.wait_for_function(TOKEN_CHANGED, arg=first, timeout=TIMEOUT_MS)
    await page.clock.resume()
    second = await _kept_token(page)
    assert _claims(second)["sub"] == "demo-user" and _claims(second)["iat"] >= _claims(
        first)["iat"]
    # the page goes on with the new token: a message, its title, a streamed answer
    requests.clear()
    await page.fill("#input", "still here")
    await page.click("#send")
    done = await page.wait_for_selector('li[data-role="assistant"][data-status="complete"]',
                                        timeout=TIMEOUT_MS)
    assert await done.eval_on_selector(".content", "e => e.textContent") == (
        "You said: still here")
    sent = await _credentials_sent(requests)
    assert sent and {c for _, c in sent} == {f"Bearer {second}"}, sent
    stored = await page.evaluate(STORED)
    assert set(stored["local"]) <= {"chat-storage.userId"}
    assert errors == []
    await page.context.close()
