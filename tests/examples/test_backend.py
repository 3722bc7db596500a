"""examples/backend: chat-storage and the example's backend as processes, a question
asked over HTTP, the stored answer checked, and a watcher holding the token the page
gets sees every token of the answer as it was streamed."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from chat_storage_client import AsyncClient, Event

from tests.conftest import Tenant
from tests.examples.conftest import EXAMPLES, example_env
from tests.support.procs import Server, free_port

ANSWER = "A zebra is an African wild horse with black and white stripes."


@pytest.fixture
async def backend(server: Server, tenant: Tenant, tmp_path: Path) -> AsyncIterator[str]:
    """``python examples/backend/app.py`` on a free port, once its page answers."""
    port = free_port()
    log = (tmp_path / "backend.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "backend" / "app.py"), "--port", str(port),
        env=example_env(server, tenant), stdout=log, stderr=asyncio.subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            while True:
                assert proc.returncode is None, (tmp_path / "backend.log").read_text()
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(base + "/") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield base
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        log.close()


async def _follow(events: AsyncIterator[Event], seen: list[Event],
                  changed: asyncio.Condition) -> None:
    async for event in events:
        seen.append(event)
        async with changed:
            changed.notify_all()


async def test_the_answer_is_stored_and_watched_token_by_token(
        backend: str, server: Server, tenant: Tenant) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(backend + "/") as r:
            assert "/web/chat-storage.js" in await r.text()  # the page uses the browser client
        async with http.post(backend + "/chats", json={"user": "ann"}) as r:
            assert r.status == 201
            chat: dict[str, Any] = await r.json()
        assert chat["chat_storage_url"] == server.base
        sid = chat["session_id"]
        seen: list[Event] = []
        changed = asyncio.Condition()
        # the page's token: this session, read and watch
        async with AsyncClient(server.base, token=chat["token"]) as page, \
                AsyncClient(server.base, api_key=tenant.key) as admin:
            watcher = asyncio.create_task(_follow(page.watch(sid), seen, changed))
            try:
                # the watcher is live once it sees a message stored after it started
                await admin.messages.create(sid, "system", "Be brief.")
                async with asyncio.timeout(15), changed:
                    await changed.wait_for(lambda: any(
                        e["type"] == "message.created" for e in seen))
                async with http.post(f"{backend}/chats/{sid}/ask",
                                     json={"user": "ann", "question": "What is a zebra?"}) as r:
                    assert r.status == 200, await r.text()
                    asked = await r.json()
                async with asyncio.timeout(15), changed:
                    await changed.wait_for(lambda: seen[-1]["type"] == "stream.completed")
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            stored = await admin.messages.list(sid).to_list()
    answer = asked["answer"]
    assert answer["content"] == ANSWER and answer["status"] == "complete"
    assert answer["parent_id"] == asked["question"]["id"]
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("system", "Be brief.", "complete"), ("user", "What is a zebra?", "complete"),
        ("assistant", ANSWER, "complete")]
    tokens = [word if i == 0 else " " + word for i, word in enumerate(ANSWER.split(" "))]
    assert stored[2]["usage"] == {"model": "fake", "completion_tokens": len(tokens)}
    # every token reached the watcher live, each as its own delta, none as a snapshot
    kinds = [e["type"] for e in seen]
    assert "stream.snapshot" not in kinds
    assert kinds[kinds.index("stream.started"):] == [
        "stream.started", *["stream.delta"] * len(tokens), "stream.completed"]
    assert [e["delta"] for e in seen if e["type"] == "stream.delta"] == tokens


async def test_another_users_chat_is_not_found(backend: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(backend + "/chats", json={"user": "ann"}) as r:
            sid = (await r.json())["session_id"]
        async with http.post(f"{backend}/chats/{sid}/ask",
                             json={"user": "bob", "question": "Hi?"}) as r:
            assert r.status == 404
