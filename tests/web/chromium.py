"""What every browser test module takes: playwright, and whether chromium is here.

In CI (.ci/run installs both) a missing browser or playwright is a failure, not a skip;
elsewhere the module is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = bool(os.environ.get("CI"))
if IN_CI:
    import playwright.async_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.async_api")

NEEDS_CHROMIUM = pytest.mark.skipif(shutil.which("chromium") is None and not IN_CI,
                                    reason="Debian's chromium is not installed")
TIMEOUT_MS = 15_000

__all__ = ["IN_CI", "NEEDS_CHROMIUM", "TIMEOUT_MS", "playwright_api"]
