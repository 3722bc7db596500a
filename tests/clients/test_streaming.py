"""Answers produced through the SDK over a real server's WebSocket, with cut connections."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from chat_storage_client import AsyncClient, NotFound, RetryPolicy, StreamError

from tests.conftest import Tenant
from tests.support.cutproxy import CutProxy
from tests.support.procs import Server

CUTS = 20
# code points of several widths (Python's len and the server's offset count code points)
ALPHABET = "abcdefgh ,.é€😀中"


async def _deltas(rng: random.Random, n: int) -> AsyncIterator[str]:
    """A fake model's tokens: it hands the loop back between tokens, as a real one does
    while it waits for the next (which is when a dropped socket is noticed)."""
    for _ in range(n):
        await asyncio.sleep(0)
        yield "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))


async def test_an_answer_survives_twenty_cut_connections(
        server: Server, proxy: CutProxy, tenant: Tenant) -> None:
    rng = random.Random(16)
    written: list[str] = []
    direct = AsyncClient(server.base, api_key=tenant.key)
    async with AsyncClient(proxy.base, api_key=tenant.key,
                           retry=RetryPolicy(attempts=8, base_s=0.02)) as client, direct:
        sid = (await client.sessions.create("u1"))["id"]
        question = await client.messages.create(sid, "user", "Tell me")
        async with client.stream_answer(sid, parent_id=question["id"],
                                        context=[{"source_id": "doc-9"}]) as answer:
            for cut in range(CUTS):
                async for delta in _deltas(rng, 30):
                    await answer.write(delta)
                    written.append(delta)
                assert proxy.cut_all() >= 1  # the producer's socket, mid-answer
                # write on until the stream noticed and resumed (bounded in count and time)
                async with asyncio.timeout(15):
                    async for delta in _deltas(rng, 10_000):
                        await answer.write(delta)
                        written.append(delta)
                        if answer.reconnects == cut + 1:
                            break
                assert answer.reconnects == cut + 1
            answer.usage = {"model": "m", "completion_tokens": len(written)}
        assert proxy.cuts >= CUTS
        stored = await direct.messages.get(sid, answer.message_id)
        assert stored["content"] == "".join(written)
        assert stored["status"] == "complete"
        assert stored["usage"] == {"model": "m", "completion_tokens": len(written)}
        assert (stored["parent_id"], stored["seq"]) == (question["id"], 2)
        assert stored["context"] == [{"source_id": "doc-9"}]
        assert answer.message is not None and answer.message["content"] == stored["content"]


async def test_an_exception_in_the_block_aborts_the_answer(
        server: Server, tenant: Tenant) -> None:
    async with AsyncClient(server.base, api_key=tenant.key) as client:
        sid = (await client.sessions.create("u1"))["id"]
        with pytest.raises(RuntimeError):
            async with client.stream_answer(sid) as answer:
                await answer.write("half an ")
                await answer.write("answer")
                raise RuntimeError("the model failed")
        stored = await client.messages.get(sid, answer.message_id)
        assert (stored["status"], stored["content"]) == ("aborted", "half an answer")
        assert stored["metadata"]["abort_reason"] == "producer raised RuntimeError"
        with pytest.raises(StreamError, match="has ended"):
            await answer.write("more")


async def test_a_lost_end_reply_is_settled_from_the_stored_answer(
        server: Server, proxy: CutProxy, tenant: Tenant) -> None:
    async with AsyncClient(proxy.base, api_key=tenant.key,
                           retry=RetryPolicy(attempts=4, base_s=0.02)) as client:
        sid = (await client.sessions.create("u1"))["id"]
        async with client.stream_answer(sid) as answer:
            await answer.write("done before the cut")
            # stream.end reaches the server; stream.completed never reaches us (frames
            # from a client are masked: the next data the producer sends is picked)
            proxy.drop_reply_to(b"")
        assert proxy.replies_dropped == 1
        assert answer.message is not None
        assert (answer.message["status"], answer.message["content"]) == (
            "complete", "done before the cut")


async def test_a_session_that_does_not_exist_is_not_found(server: Server, tenant: Tenant) -> None:
    missing = "00000000-0000-7000-8000-000000000000"
    async with AsyncClient(server.base, api_key=tenant.key) as client:
        with pytest.raises(NotFound):
            async with client.stream_answer(missing):
                pass
        with pytest.raises(NotFound):
            await anext(client.watch(missing))  # type: ignore[arg-type]


async def test_an_answer_ends_with_tool_calls_and_a_tool_reply_streams(
        server: Server, tenant: Tenant) -> None:
    calls = [{"id": "call-1", "name": "calc", "arguments": {"expr": "2 + 2"}}]
    async with AsyncClient(server.base, api_key=tenant.key) as client:
        sid = (await client.sessions.create("u1"))["id"]
        async with client.stream_answer(sid) as answer:
            await answer.write("let me compute")
            ended = await answer.end(tool_calls=calls)
        assert (ended["tool_calls"], ended["content"]) == (calls, "let me compute")
        async with client.stream_answer(sid, role="tool", tool_call_id="call-1") as reply:
            await reply.write("4")
        assert reply.message is not None and reply.message["tool_call_id"] == "call-1"
        stored = await client.messages.list(sid).to_list()
        assert [(m["tool_calls"], m["tool_call_id"]) for m in stored] == [
            (calls, None), (None, "call-1")]
