"""Following a session live through the SDK while its connection is cut again and again."""

from __future__ import annotations

import asyncio

from chat_storage_client import AsyncClient, Event, RetryPolicy

from tests.conftest import Tenant
from tests.support.cutproxy import CutProxy
from tests.support.procs import Server

CUTS = 10


class Follower:
    """What a watcher saw: the messages by seq and the text of each answer."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.texts: dict[str, str] = {}
        self.final: dict[str, Event] = {}
        self.resent = 0
        self.changed = asyncio.Condition()

    async def follow(self, events: object) -> None:
        async for event in events:  # type: ignore[attr-defined]
            kind = event["type"]
            if kind == "message.created":
                self.seqs.append(event["message"]["seq"])
            elif kind == "stream.started":
                self.seqs.append(event["seq"])
                self.texts[event["stream_id"]] = ""
            elif kind == "stream.snapshot":
                # resent text it already had (a snapshot from 0 is the server's answer
                # to offset 0: it costs nothing)
                self.resent += len(self.texts.get(event["stream_id"], ""))
                self.texts[event["stream_id"]] = event["content"]
            elif kind == "stream.delta":
                text = self.texts[event["stream_id"]]
                assert event["offset"] == len(text), "a delta lost or repeated"
                self.texts[event["stream_id"]] = text + event["delta"]
            elif kind in ("stream.completed", "stream.aborted", "stream.interrupted"):
                self.final[event["message"]["id"]] = event["message"]
            async with self.changed:
                self.changed.notify_all()

    async def until(self, check: object, timeout_s: float = 15.0) -> None:
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(check)  # type: ignore[arg-type]


async def test_watch_resumes_exactly_after_cut_connections(
        server: Server, proxy: CutProxy, tenant: Tenant) -> None:
    producer = AsyncClient(server.base, api_key=tenant.key)
    watcher = AsyncClient(proxy.base, api_key=tenant.key,
                          retry=RetryPolicy(attempts=8, base_s=0.02))
    async with producer, watcher:
        sid = (await producer.sessions.create("u1"))["id"]
        await producer.messages.create(sid, "user", "before")
        seen = Follower()
        following = asyncio.create_task(seen.follow(watcher.watch(sid)))
        try:
            await seen.until(lambda: seen.seqs == [1])
            written = ""
            async with producer.stream_answer(sid) as answer:
                await seen.until(lambda: answer.stream_id in seen.texts)
                for i in range(CUTS):
                    for j in range(20):
                        delta = f"<{i}.{j}>"
                        await answer.write(delta)
                        written += delta
                    assert proxy.cut_all() >= 1  # deltas in flight to the watcher are lost
                    if i == CUTS // 2:  # a message committed while it is away
                        await producer.messages.create(sid, "user", "meanwhile")
                    await seen.until(lambda w=written: seen.texts[answer.stream_id] == w)
            await seen.until(lambda: answer.stream_id in seen.final)
            assert seen.texts[answer.stream_id] == written
            assert seen.final[answer.stream_id]["content"] == written
            assert seen.seqs == [1, 2, 3]  # each once, in order
            # it resumed from its offsets (`streams`): what it had was never sent again
            assert seen.resent == 0
            assert proxy.cuts >= CUTS
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)


async def test_watch_from_seq_starts_there(server: Server, tenant: Tenant) -> None:
    async with AsyncClient(server.base, api_key=tenant.key) as client:
        sid = (await client.sessions.create("u1"))["id"]
        for i in range(4):
            await client.messages.create(sid, "user", f"m{i}")
        events = client.watch(sid, from_seq=2)
        first = await anext(events)
        await events.aclose()  # type: ignore[attr-defined]
        assert (first["type"], first["message"]["seq"]) == ("message.created", 3)


def test_position_drops_what_it_has_and_trims_overlaps() -> None:
    from chat_storage_client.watch import Position

    pos = Position(after_seq=0)
    message = {"type": "message.created", "message": {"seq": 1, "id": "m1"}}
    assert pos.take(message) == message
    assert pos.take(message) is None  # a replay of a message it has
    assert pos.take({"type": "stream.started", "stream_id": "s", "seq": 2}) is not None
    assert pos.take({"type": "stream.delta", "stream_id": "s", "offset": 0, "delta": "abc"})
    assert pos.take({"type": "stream.delta", "stream_id": "s", "offset": 0,
                     "delta": "ab"}) is None
    assert pos.take({"type": "stream.delta", "stream_id": "s", "offset": 1,
                     "delta": "bcde"}) == {"type": "stream.delta", "stream_id": "s",
                                           "offset": 3, "delta": "de"}
    assert pos.subscribe_frame() == {"type": "subscribe", "after_seq": 2,
                                     "streams": [{"seq": 2, "offset": 5}]}
    pos.take({"type": "stream.completed", "message": {"seq": 2, "id": "s"}})
    assert pos.subscribe_frame()["streams"] == []
