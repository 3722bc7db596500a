"""After broker events were lost: bring each feed back in line with Postgres.

While the broker was down (or dropped a replica's events), other replicas' events did
not reach this one: messages committed, answers streamed and finished. A feed cannot
see a hole in what never comes, so it is told: when this process's broker reader has
Redis again (``Broker.on_resume``), every feed; when another replica's relay says it
dropped events of a session (the ``events.RECONCILE`` marker), that session's feed.

Reconciling reads the session from Postgres and passes what the feed missed through
its usual path (``Feed.ingest``, which orders and de-duplicates): the final event of
each answer it mirrors that ended, the messages after its ``last_seq``, and a fresh
read (``Feed.resync``: checkpoint plus what the broker still holds) of each answer
still going. A feed that cannot be reconciled (Postgres fails too, a few times) is
broken: its subscribers are cut and resume on a fresh one, so none stays stale.
"""

from __future__ import annotations

import asyncio
import logging

from chat_storage.actors.live import events, metrics
from chat_storage.actors.live.feed import Feed, FeedSource
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)
ATTEMPTS = 4
# at most this many feeds read Postgres at once: after an outage every feed of the
# process asks at the same moment, and the pool must still serve the requests
CONCURRENCY = 4


async def reconcile(feed: Feed, source: FeedSource) -> None:
    """Pass ``feed`` what Postgres has and it does not (one read of each kind)."""
    await feed.wait_ready()
    last_seq, streaming = await source.load(feed.key)
    going = {str(row["id"]) for row in streaming}
    ended = sorted(m.seq for sid, m in feed.mirrors.items() if sid not in going)
    for row in await source.at_seqs(feed.key, ended) if ended else []:
        if row["status"] in events.FINAL_BY_STATUS:
            feed.ingest(events.final(row))
    if last_seq > feed.last_seq:
        for row in await source.between(feed.key, feed.last_seq, last_seq):
            feed.ingest(events.from_row(row))
    for sid in going & feed.mirrors.keys():
        feed.resync(sid)


class Reconciler:
    """At most one reconcile per feed at a time; a request meanwhile runs it once more."""

    def __init__(self, source: FeedSource, *, tasks: Supervisor) -> None:
        self._source = source
        self._tasks = tasks
        self._running: dict[Feed, asyncio.Task[None]] = {}
        self._again: set[Feed] = set()
        self._slots = asyncio.Semaphore(CONCURRENCY)

    def request(self, feed: Feed) -> None:
        """Reconcile ``feed`` soon (never waits)."""
        if feed.broken:
            return
        if feed in self._running:
            self._again.add(feed)
            return
        task = self._tasks.spawn(self._run(feed), name=f"feed-reconcile:{feed.key[1]}")
        self._running[feed] = task
        task.add_done_callback(lambda _: self._done(feed))

    def cancel(self, feed: Feed) -> None:
        """The feed closes: stop its reconcile."""
        self._again.discard(feed)
        task = self._running.get(feed)
        if task is not None:
            self._tasks.cancel(task)

    def _done(self, feed: Feed) -> None:
        self._running.pop(feed, None)
        if feed in self._again:
            self._again.discard(feed)
            self.request(feed)

    async def _run(self, feed: Feed) -> None:
        for attempt in range(ATTEMPTS):
            if feed.broken:
                return
            try:
                async with self._slots:
                    await reconcile(feed, self._source)
            except Exception as exc:
                log.warning("cannot reconcile a session feed", extra={
                    "session_id": str(feed.key[1]), "error": repr(exc)})
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            metrics.BROKER_RECONCILES.labels("feed").inc()
            return
        metrics.BROKER_RECONCILES.labels("failed").inc()
        feed.fail("cannot reconcile with Postgres")
