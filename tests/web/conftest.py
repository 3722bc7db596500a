"""What the browser tests share: Debian's chromium, headless, driven by playwright.

Playwright's own browser download is never used. Each test module decides whether a
missing chromium or playwright is a skip (outside CI) or a failure (in CI).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless chromium for one test."""
    from playwright.async_api import async_playwright  # the modules skip when it is missing

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()
