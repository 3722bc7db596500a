"""The JavaScript client (clients/js) against a real server: ``node --test`` driven from here.

pytest starts what the Node tests need and names it in their environment: the server
(``CS_BASE_URL``), the same server behind a :class:`CutProxy` (``CS_PROXY_URL``), a
second server that allows one request a second (``CS_SLOW_URL``, for 429), the tenant's
key (``CS_API_KEY``), and a small control app (``CS_CONTROL_URL``) through which a test
cuts the proxy's connections or swallows an answer. The control app also stands in
for servers of another contract version: ``/v2/openapi.json`` and
``/nosearch/openapi.json`` are the real server's document, rewritten (no other version
of the server can run here), as tests/clients/test_contract.py does for the Python SDK.
Node's output is shown when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Tenant
from tests.support.cutproxy import CutProxy
from tests.support.node import node_or_skip
from tests.support.procs import ROOT, Server, clean_env

TESTS = ROOT / "clients" / "js" / "test"
NODE_TIMEOUT_S = 300.0
TEST_TIMEOUT_MS = 120_000  # one Node test: a hung one fails with its name, not the whole run
MIN_TESTS = 17  # the Node tests written so far: none may go missing unnoticed


@pytest.fixture
async def slow_server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A server allowing one request a second (burst 1): the second in a row gets 429."""
    proc = Server(database_url, tmp_path / "slow.log",
                  env={"CHAT_RATE_LIMIT_PER_S": "1", "CHAT_RATE_LIMIT_BURST": "1"})
    await proc.start()
    try:
        yield proc
    finally:
        await proc.kill()


def _rewritten(server: Server, rewrite: Callable[[dict[str, Any]], None]) -> Any:
    async def openapi(_: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as http, http.get(f"{server.base}/openapi.json") as r:
            document: dict[str, Any] = await r.json()
        rewrite(document)
        return web.json_response(document)
    return openapi


def _version_2(document: dict[str, Any]) -> None:
    document["info"]["version"] = "2.0"


def _without_search(document: dict[str, Any]) -> None:
    del document["paths"]["/api/v1/search"]


@contextlib.asynccontextmanager
async def control_app(server: Server, proxy: CutProxy) -> AsyncIterator[str]:
    """The Node tests' handle on the proxy, and the stand-ins of other versions; its URL."""
    async def cut(_: web.Request) -> web.Response:
        return web.json_response({"cut": proxy.cut_all()})

    async def drop(request: web.Request) -> web.Response:
        proxy.drop_reply_to(request.query["marker"].encode())
        return web.json_response({})

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"cuts": proxy.cuts, "replies_dropped": proxy.replies_dropped})

    app = web.Application()
    app.router.add_post("/cut", cut)
    app.router.add_post("/drop", drop)
    app.router.add_post("/stats", stats)
    app.router.add_get("/v2/openapi.json", _rewritten(server, _version_2))
    app.router.add_get("/nosearch/openapi.json", _rewritten(server, _without_search))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def control(server: Server, proxy: CutProxy) -> AsyncIterator[str]:
    async with control_app(server, proxy) as url:
        yield url


async def run_node(node: str, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run node (in this loop's background, so the proxy and control app keep serving)."""
    proc = await asyncio.create_subprocess_exec(
        node, *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        output, _ = await proc.communicate()
        return -1, output.decode(errors="replace") + f"\n(killed after {NODE_TIMEOUT_S} s)"
    return proc.returncode or 0, output.decode(errors="replace")


@pytest.mark.timeout(int(NODE_TIMEOUT_S) + 60)
async def test_the_js_client_against_a_real_server(
        server: Server, proxy: CutProxy, slow_server: Server, control: str,
        tenant: Tenant) -> None:
    node = node_or_skip()
    env = clean_env(CS_BASE_URL=server.base, CS_PROXY_URL=proxy.base, CS_SLOW_URL=slow_server.base,
                    CS_CONTROL_URL=control, CS_API_KEY=tenant.key, NO_COLOR="1")
    # one file at a time: the proxy's cuts are for the test that asks for them
    # --test-force-exit: a failed test that leaves a socket reconnecting cannot hang the run
    code, output = await run_node(node, "--test", "--test-concurrency=1", "--test-force-exit",
                                  "--test-reporter=spec",
                                  f"--test-timeout={TEST_TIMEOUT_MS}",
                                  f"{TESTS.relative_to(ROOT)}/*.test.js", env=env)
    assert code == 0, f"node --test failed (exit {code}):\n{output[-20000:]}"
    passed = re.search(r"^\S* ?pass (\d+)$", output, re.MULTILINE)
    assert passed is not None and int(passed.group(1)) >= MIN_TESTS, output[-5000:]
