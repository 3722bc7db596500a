"""The README's "Use it from your app" snippets run, as written, against a real server.

Each Python subsection's block is run as a program with ``CHAT_STORAGE_URL`` and
``CHAT_STORAGE_API_KEY`` set (the client imported from clients/python/src, as
tests/clients do), and what it prints is checked.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import Tenant, make_tenant
from tests.support.procs import Server, clean_env

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Use it from your app"
# subsection -> what its block prints
PRINTS = {
    "### Python SDK": "['What is a zebra?', 'A zebra is a striped horse.']",
    "### LangChain": "['Hi', 'Hello!']",
    "### LlamaIndex": "['What is a zebra?'] ['zebras']",
}
MAX_LINES = 15


def subsections() -> dict[str, str]:
    """The section's subsections by heading (their text up to the next heading)."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n{SECTION}\n", 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    parts = re.split(r"^(### .+)$", section, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_section_has_each_snippet_short_and_the_install_lines() -> None:
    found = subsections()
    for heading in PRINTS:
        blocks = python_blocks(found[heading])
        assert len(blocks) == 1, heading
        assert len(blocks[0].splitlines()) < MAX_LINES, heading
    text = (ROOT / "README.md").read_text().split(f"\n{SECTION}\n", 1)[1]
    for line in ("pip install ./clients/python ", "pip install './clients/python[langchain]'",
                 "pip install './clients/python[llama-index]'"):
        assert line in text
    extras = (ROOT / "clients/python/pyproject.toml").read_text()
    assert 'langchain = [' in extras and 'llama-index = [' in extras


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    proc = Server(database_url, tmp_path / f"server-{secrets.token_hex(3)}.log")
    await proc.start()
    try:
        yield proc
    finally:
        await proc.kill()


@pytest.fixture
async def tenant(pool: asyncpg.Pool) -> Tenant:
    return await make_tenant(pool, "readme")


@pytest.mark.parametrize("heading", list(PRINTS))
async def test_the_snippet_runs(heading: str, server: Server, tenant: Tenant,
                                tmp_path: Path) -> None:
    program = tmp_path / "snippet.py"
    program.write_text(python_blocks(subsections()[heading])[0])
    env = clean_env(CHAT_STORAGE_URL=server.base, CHAT_STORAGE_API_KEY=tenant.key,
                    PYTHONPATH=str(ROOT / "clients" / "python" / "src"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(program), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert out.decode().strip() == PRINTS[heading]


def test_the_langchain_switch_adds_exactly_lines_the_runnable_block_runs() -> None:
    """The ``diff`` block cannot run (it needs langchain_postgres and its database), so
    what it adds must be lines of the block that does run."""
    section = subsections()["### LangChain"]
    [switch] = re.findall(r"```diff\n(.*?)```", section, re.S)
    added = [line[1:] for line in switch.splitlines() if line.startswith("+")]
    removed = [line for line in switch.splitlines() if line.startswith("-")]
    assert added and len(added) == len(removed)
    runnable = python_blocks(section)[0].splitlines()
    assert all(line in runnable for line in added), added
