"""A session feed passes each event on once, whatever paths bring it twice.

The feed of replica B gets another replica's events from the broker and the same
events again from its own reads: its start-up (``last_seq``, the streaming rows, the
broker's log) and its hole filling. What it passes on is the contract its subscribers
build on: each ``seq`` once, in order; each stream's text once, in non-overlapping,
non-empty deltas (docs/api.md). The subscriptions drop duplicates too, so some of these
slips never reach a client (see ``test_exactly_once.py``); they are caught here.

The feed's source is scripted, a fake standing in for Postgres and the broker's log:
each read returns what the test set and can be held, so a broker event lands inside
the read on every run, and a test can set shapes the real components give only by
chance (a hole in ``seq`` filled while the late copy arrives; a delta cut at another
boundary than the feed's). What a subscription does with the events is left out:
``Recorder`` (``tests/support/interleave.py``) keeps exactly what the feed passed on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import cast

import pytest

from chat_storage.actors.live import events
from chat_storage.actors.live.events import SessionEvent
from chat_storage.actors.live.feed import Feed
from chat_storage.storage.records import SessionKey, StoredMessage
from chat_storage.supervisor import Supervisor
from tests.support.interleave import Hold, Recorder

KEY: SessionKey = (uuid.UUID(int=1), uuid.UUID(int=2))
STREAM = "s1"
WAIT_S = 5.0


class ScriptedSource:
    """The feed's ``FeedSource`` (Postgres rows, the broker's log), set by the test.

    ``hold()`` pauses the next Postgres read (``load`` or ``between``) until released;
    ``reads`` lists the Postgres reads made.
    """

    def __init__(self) -> None:
        self.last_seq = 0
        self.rows: list[StoredMessage] = []
        self.log: list[SessionEvent] = []
        self.reads: list[tuple[str, int, int]] = []
        self._holds: list[Hold] = []

    def hold(self) -> Hold:
        h = Hold("before")
        self._holds.append(h)
        return h

    def add(self, seq: int, status: str = "complete", content: str = "") -> StoredMessage:
        row = cast(StoredMessage, {"id": f"m{seq}" if status != "streaming" else STREAM,
                                   "seq": seq, "role": "assistant", "status": status,
                                   "content": content})
        self.rows.append(row)
        self.last_seq = seq
        return row

    async def load(self, key: SessionKey) -> tuple[int, list[StoredMessage]]:
        self.reads.append(("load", 0, 0))
        await self._pause()
        return self.last_seq, [r for r in self.rows if r["status"] == "streaming"]

    async def between(self, key: SessionKey, after_seq: int,
                      upto: int) -> list[StoredMessage]:
        self.reads.append(("between", after_seq, upto))
        await self._pause()
        return [r for r in self.rows if after_seq < r["seq"] <= upto]

    async def history(self, key: SessionKey) -> list[SessionEvent]:
        return list(self.log)

    def local_streams(self, key: SessionKey) -> dict[str, str]:
        return {}  # every stream is produced on another replica

    async def _pause(self) -> None:
        if self._holds:
            await self._holds.pop(0).pause()


@pytest.fixture
def source() -> ScriptedSource:
    return ScriptedSource()


@pytest.fixture
async def feed(source: ScriptedSource, tasks: Supervisor) -> AsyncIterator[Feed]:
    f = Feed(KEY, source, tasks=tasks)
    yield f
    await f.close()


def _created(row: StoredMessage) -> SessionEvent:
    return events.created(row)


def _started(seq: int) -> SessionEvent:
    """``stream.started`` as it comes from the broker (no content)."""
    _, ev = events.open_envelope(events.envelope(b"a", events.started(cast(
        StoredMessage, {"id": STREAM, "seq": seq, "role": "assistant"}))))
    assert ev is not None
    return ev


async def _ready(feed: Feed) -> None:
    async with asyncio.timeout(WAIT_S):
        await feed.wait_ready()


async def test_start_up_drops_a_message_its_load_already_counts(
    source: ScriptedSource, feed: Feed
) -> None:
    source.add(1)
    loading = source.hold()
    rec = Recorder()
    feed.subs.append(rec)
    feed.start()
    await loading.reached()
    two = source.add(2)  # committed before the load reads; its broker copy arrives now
    feed.ingest(_created(two))
    loading.release()
    await _ready(feed)
    feed.ingest(_created(source.add(3)))
    assert rec.brief() == [(events.CREATED, 3)]
    assert source.reads == [("load", 0, 0)]


async def test_hole_filling_and_broker_bring_a_message_once(
    source: ScriptedSource, feed: Feed
) -> None:
    source.add(1)
    feed.start()
    await _ready(feed)
    rec = Recorder()
    feed.subs.append(rec)
    two, three = source.add(2), source.add(3)
    filling = source.hold()
    feed.ingest(_created(three))  # from replica C, ahead of 2: read from Postgres
    await filling.reached()
    feed.ingest(_created(two))  # replica A's copy of 2 arrives while it is read
    filling.release()
    await rec.until(2)  # 2 from Postgres, then 3
    feed.ingest(_created(source.add(4)))
    feed.ingest(_created(two))  # and once more, late
    feed.ingest(_created(source.add(5)))
    assert rec.brief() == [(events.CREATED, s) for s in (2, 3, 4, 5)]
    assert source.reads == [("load", 0, 0), ("between", 1, 2)]  # no hole read twice


async def test_start_up_passes_each_character_once(source: ScriptedSource, feed: Feed) -> None:
    source.add(1, "streaming", content="Hel")  # the last checkpoint
    source.log = [_started(1), events.delta(STREAM, 0, "Hel"), events.delta(STREAM, 3, "lo ")]
    loading = source.hold()
    rec = Recorder()
    feed.subs.append(rec)
    feed.start()
    await loading.reached()
    late = events.delta(STREAM, 6, "wor")  # in the broker's log, and live
    source.log.append(late)
    feed.ingest(late)
    loading.release()
    await _ready(feed)
    feed.ingest(events.delta(STREAM, 3, "lo "))  # a late copy
    feed.ingest(events.delta(STREAM, 9, "ld"))
    assert rec.brief() == [("delta", 9, "ld")]
    assert feed.mirrors[STREAM].text() == "Hello world"


async def test_start_up_takes_each_character_of_the_log_once_whatever_its_cuts(
    source: ScriptedSource, feed: Feed
) -> None:
    # the checkpoint ends inside a delta of the broker's log: only its tail is new
    source.add(1, "streaming", content="Hel")
    source.log = [_started(1), events.delta(STREAM, 0, "He"), events.delta(STREAM, 2, "llo "),
                  events.delta(STREAM, 6, "wor")]
    feed.start()
    await _ready(feed)
    assert feed.mirrors[STREAM].text() == "Hello wor"


async def test_start_up_does_not_cross_a_hole_in_the_log(
    source: ScriptedSource, feed: Feed
) -> None:
    # the log lost what follows the checkpoint: what comes after the hole is not pasted on
    source.add(1, "streaming", content="Hel")
    source.log = [_started(1), events.delta(STREAM, 6, "wor")]
    feed.start()
    await _ready(feed)
    assert feed.mirrors[STREAM].text() == "Hel"

async def test_an_overlapping_delta_is_trimmed(source: ScriptedSource, feed: Feed) -> None:
    source.add(1, "streaming", content="Hello")
    feed.start()
    await _ready(feed)
    rec = Recorder()
    feed.subs.append(rec)
    feed.ingest(events.delta(STREAM, 3, "lo world"))  # cut elsewhere: overlaps what it has
    feed.ingest(events.delta(STREAM, 11, "!"))
    assert rec.brief() == [("delta", 5, " world"), ("delta", 11, "!")]
    assert feed.mirrors[STREAM].text() == "Hello world!"


async def test_the_end_of_a_stream_is_passed_on_once(source: ScriptedSource, feed: Feed) -> None:
    source.add(1, "streaming", content="Hi")
    feed.start()
    await _ready(feed)
    rec = Recorder()
    feed.subs.append(rec)
    final = events.final(cast(StoredMessage, {
        "id": STREAM, "seq": 1, "role": "assistant", "status": "complete", "content": "Hi"}))
    feed.ingest(final)
    feed.ingest(events.delta(STREAM, 0, "Hi"))  # late copies, after the end
    feed.ingest(final)
    feed.ingest(_created(source.add(2)))
    assert rec.brief() == [(events.COMPLETED, 1), (events.CREATED, 2)]
