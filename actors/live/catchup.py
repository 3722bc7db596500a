"""A new subscriber's catch-up: from its position to live, every event exactly once.

See ``docs/streaming.md``. The subscription is already registered with the feed
(live events wait in it), so nothing that happens during the reads is missed; what
the reads and the waiting live events have in common is dropped by its cursor.
"""

from __future__ import annotations

from collections.abc import Mapping

from chat_storage.actors.live import events
from chat_storage.actors.live.feed import Feed
from chat_storage.actors.live.source import PAGE, SessionSource
from chat_storage.actors.live.subscription import Subscription
from chat_storage.storage.records import SessionKey, StoredMessage


async def catch_up(source: SessionSource, key: SessionKey, feed: Feed, sub: Subscription,
                   after_seq: int, known: Mapping[int, int]) -> None:
    """Send ``sub`` what happened after ``after_seq`` (and past ``known``), then go live.

    ``known`` maps the seq of streams the client saw in progress (at or below
    ``after_seq``) to the content length it has: it gets the rest as one delta, or the
    stream's final event.
    """
    streaming: dict[str, StoredMessage] = {}
    seqs = [s for s in known if s <= after_seq]
    rows = await source.at_seqs(key, seqs) if seqs else []
    for row in rows:
        await sub.outbox.room()
        sub.knows(row, known[int(row["seq"])])
        if row["status"] == "streaming":
            streaming[str(row["id"])] = row
    cursor = after_seq
    while True:
        rows = await source.after(key, cursor)
        for row in rows:
            await sub.outbox.room()
            sub.offer(events.from_row(row), force=True)
            if row["status"] == "streaming":
                streaming[str(row["id"])] = row
        if len(rows) < PAGE:
            break
        cursor = int(rows[-1]["seq"])
    # no await from here on: the snapshots and the waiting live events meet exactly
    for sid, mirror in list(feed.mirrors.items()):
        sub.catch_up(sid, mirror.seq, mirror.text())
    for sid, row in streaming.items():
        if sid not in feed.mirrors:  # not yet announced here (another replica's)
            sub.catch_up(sid, int(row["seq"]), str(row["content"]))
    sub.go_live()
