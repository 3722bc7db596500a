"""examples/ai-sdk: the Vercel AI SDK (npm ``ai``) reads a real server's UI message streams.

``node --test`` runs examples/ai-sdk/test/ against ``chat-storage serve``: the package's
own ``readUIMessageStream`` and ``DefaultChatTransport.reconnectToStream`` (what
``useChat({resume: true})`` calls) through the README's Next.js route handler, for a
finished answer and one joined mid-stream. Node 22 and the folder's ``npm ci`` come from
``scripts/setup_node.sh``.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import make_tenant
from tests.support.node import node_or_skip, packages_or_skip
from tests.support.procs import ROOT, Server

EXAMPLE = ROOT / "examples" / "ai-sdk"
NODE_DEADLINE_S = 120.0
TESTS = 6  # in examples/ai-sdk/test


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    """``chat-storage serve`` on the test database, on a loopback port of its own."""
    proc = Server(database_url, tmp_path / f"server-{secrets.token_hex(3)}.log")
    await proc.start()
    try:
        yield proc
    finally:
        await proc.kill()


async def test_the_ai_sdk_reads_finished_and_live_answers(server: Server,
                                                         pool: asyncpg.Pool) -> None:
    node = node_or_skip()
    packages_or_skip(EXAMPLE)
    tenant = await make_tenant(pool, "aisdk")
    env = {**os.environ, "CHAT_STORAGE_URL": server.base, "CHAT_STORAGE_API_KEY": tenant.key}
    proc = await asyncio.create_subprocess_exec(
        node, "--experimental-strip-types", "--no-warnings", "--test",
        "--test-reporter=spec", cwd=EXAMPLE, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), NODE_DEADLINE_S)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"node --test did not finish in {NODE_DEADLINE_S} s:\n{out.decode()}")
    report = out.decode()
    assert proc.returncode == 0, report
    # every test ran (a file that node found no test in would also exit 0)
    passed = re.search(r"\bpass (\d+)\n", report)
    assert passed is not None and int(passed.group(1)) == TESTS, report
