"""Every Redis key this service uses, in one place, namespaced by ``CHAT_REDIS_PREFIX``.

Several deployments (or test runs) can share one Redis as long as their prefixes
differ. Build keys through :class:`RedisKeys` rather than formatting templates by hand,
so a grep for a template finds every user of a key.

Redis Cluster is not supported: the broker reads many session streams with one
``XREAD``, and a multi-key command needs all its keys in one hash slot.
"""

from __future__ import annotations

import dataclasses

# One Redis stream per active session: its events (``message.created``, ``stream.*``),
# capped with ``MAXLEN ~`` and expiring when idle. Written by storage.broker.redis.
SESSION_STREAM = "{prefix}:s:{channel}"
# A process's private wake-up stream: included in that process's XREAD so that adding
# a channel interrupts the blocking read at once. Written by storage.broker.redis_reader.
READER_WAKE = "{prefix}:wake:{node}"
# Token bucket of one API key (hash ``t`` tokens, ``ts`` ms), deleted when it would be
# full again. Written by storage.ratelimit.redis.
RATE_BUCKET = "{prefix}:rl:{key_id}"
# Async ingestion (CHAT_INGEST_MODE=async): the stream writes are appended to, the
# consumer group that persists them, and the dead-letter stream of entries that can
# never be stored (session gone, bad reference). Written by storage.ingest.
INGEST_STREAM = "{prefix}:ingest"
INGEST_GROUP = "{prefix}:ingest:writers"
INGEST_DEAD = "{prefix}:ingest:dead"


@dataclasses.dataclass(frozen=True, slots=True)
class RedisKeys:
    """The key templates above, bound to one prefix."""

    prefix: str

    def __post_init__(self) -> None:
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ValueError("redis prefix must be non-empty and contain no whitespace")

    def session_stream(self, channel: str) -> str:
        """The event stream of broker channel ``channel`` (a session)."""
        return SESSION_STREAM.format(prefix=self.prefix, channel=channel)

    def reader_wake(self, node: str) -> str:
        """The wake-up stream of the broker reader of process ``node``."""
        return READER_WAKE.format(prefix=self.prefix, node=node)

    def rate_bucket(self, key_id: str) -> str:
        """The token bucket of API key ``key_id``."""
        return RATE_BUCKET.format(prefix=self.prefix, key_id=key_id)

    @property
    def ingest_stream(self) -> str:
        """The async-ingestion stream."""
        return INGEST_STREAM.format(prefix=self.prefix)

    @property
    def ingest_group(self) -> str:
        """The consumer group of the async-ingestion workers."""
        return INGEST_GROUP.format(prefix=self.prefix)

    @property
    def ingest_dead(self) -> str:
        """The dead-letter stream of async ingestion."""
        return INGEST_DEAD.format(prefix=self.prefix)
