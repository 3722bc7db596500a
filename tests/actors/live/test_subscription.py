"""Subscriptions and outboxes, alone: the exactly-once filter and the bounded queue."""

from __future__ import annotations

import orjson

from chat_storage.actors.live import events
from chat_storage.actors.live.outbox import Outbox
from chat_storage.actors.live.subscription import Subscription
from chat_storage.server.transport.framing import event_id


def test_subscription_drops_duplicates_and_trims_overlaps() -> None:
    outbox = Outbox(100)
    sub = Subscription(outbox)
    sub.go_live()
    message = {"id": "m1", "seq": 1, "role": "assistant", "status": "streaming"}
    sub.offer(events.started(message))
    sub.offer(events.started(message))  # a duplicate
    sub.offer(events.delta("m1", 0, "abc"))
    sub.offer(events.delta("m1", 1, "bcdef"))  # overlaps: only "def" is new
    sub.offer(events.delta("m1", 2, "cd"))  # nothing new
    sub.offer(events.delta("m1", 9, "zz"))  # a hole: never sent
    assert event_id(sub) == "1,1:6"
    sent = [orjson.loads(f) for f in outbox._items]
    assert [(f["type"], f.get("offset"), f.get("delta")) for f in sent] == [
        ("stream.started", None, None), ("stream.delta", 0, "abc"), ("stream.delta", 3, "def")]
    final = dict(message, status="complete", content="abcdef")
    sub.offer(events.final(final))
    sub.offer(events.final(final))
    assert event_id(sub) == "1" and len(outbox) == 4


def test_outbox_cuts_instead_of_growing() -> None:
    cut: list[bool] = []
    outbox = Outbox(2, on_overflow=lambda: cut.append(True))
    assert outbox.put(b"1") and outbox.put(b"2")
    assert not outbox.put(b"3")
    assert cut == [True] and outbox.overflowed and outbox.closed and len(outbox) == 0
    assert not outbox.put(b"4", force=True)


def test_a_resuming_client_gets_exactly_what_it_lacks_of_a_stream() -> None:
    """``known`` offsets at resume: the rest as one delta, nothing when it has it all
    (never an empty delta), and never less than the client has: when this replica has
    less (its feed lags), nothing until its deltas pass the client's offset."""
    row = {"id": "m1", "seq": 1, "role": "assistant", "status": "streaming"}

    def resume(known: int, *later: events.SessionEvent) -> list[
            tuple[str, int | None, str | None]]:
        outbox = Outbox(100)
        sub = Subscription(outbox, after_seq=1)
        sub.knows(row, known)  # type: ignore[arg-type]  # the fields it reads
        sub.catch_up("m1", 1, "Hello")
        sub.go_live()
        for ev in later:  # what the lagging feed passes on next
            sub.offer(ev)
        sent = [orjson.loads(f) for f in outbox._items]
        return [(f["type"], f.get("offset"), f.get("delta", f.get("content")))
                for f in sent]

    assert resume(3) == [("stream.delta", 3, "lo")]
    assert resume(5) == []
    assert resume(9) == []  # never a snapshot shorter than what the client has
    lagging = (events.delta("m1", 5, " wor"), events.snapshot("m1", 1, "Hello wo"),
               events.delta("m1", 9, "ld"), events.snapshot("m1", 1, "Hello world!"))
    assert resume(9, *lagging) == [("stream.delta", 9, "ld"),
                                   ("stream.snapshot", 12, "Hello world!")]


def test_a_stream_that_ended_while_the_client_was_away_sends_the_rest_before_its_end() -> None:
    """A resuming client that had part of a stream which has since ended gets the rest
    as one delta, then the final event: appending every delta gives the whole answer
    (the JS watch test lost the tail of an answer that ended while its socket was cut)."""
    done = {"id": "m1", "seq": 1, "role": "assistant", "status": "complete", "content": "Hello"}

    def sent(outbox: Outbox) -> list[tuple[str, int | None, str | None]]:
        frames = [orjson.loads(f) for f in outbox._items]
        return [(f["type"], f.get("offset"), f.get("delta")) for f in frames]

    # it ended before the resume read it
    outbox = Outbox(100)
    sub = Subscription(outbox, after_seq=1)
    sub.knows(done, 3)  # type: ignore[arg-type]  # the fields it reads
    sub.go_live()
    assert sent(outbox) == [("stream.delta", 3, "lo"), ("stream.completed", None, None)]

    # it ended while the catch-up read (its final event waited among the live ones)
    outbox = Outbox(100)
    sub = Subscription(outbox, after_seq=1)
    sub.knows(dict(done, status="streaming"), 3)  # type: ignore[arg-type]
    sub.deliver(events.final(done))  # type: ignore[arg-type]
    sub.go_live()
    assert sent(outbox) == [("stream.delta", 3, "lo"), ("stream.completed", None, None)]
    sub.offer(events.final(done))  # type: ignore[arg-type]  # a late duplicate: nothing
    assert len(outbox) == 2

    # a client that had it all, or a stream it did not know: the final event alone
    for known in (5, None):
        outbox = Outbox(100)
        sub = Subscription(outbox, after_seq=1)
        if known is not None:
            sub.knows(done, known)  # type: ignore[arg-type]
        sub.go_live()
        sub.offer(events.final(done))  # type: ignore[arg-type]
        assert sent(outbox) == [("stream.completed", None, None)]
