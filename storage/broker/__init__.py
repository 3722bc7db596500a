"""The broker: ordered per-session message logs shared between processes.

The interface and its types are in :mod:`.base`; :mod:`.memory` is the implementation
for one process, :mod:`.redis` (with its reader, :mod:`.redis_reader`) the one shared
by replicas through Redis streams. :func:`open_broker` picks one.
"""

from __future__ import annotations

from redis.asyncio import Redis

from chat_storage.storage.broker.base import (
    Broker,
    BrokerMessage,
    BrokerUnavailable,
    Gap,
    Listener,
)
from chat_storage.storage.broker.memory import MemoryBroker
from chat_storage.storage.broker.redis import RedisBroker
from chat_storage.supervisor import Supervisor

__all__ = ["Broker", "BrokerMessage", "BrokerUnavailable", "Gap", "Listener", "MemoryBroker",
           "RedisBroker", "open_broker"]


def open_broker(client: Redis | None, *, tasks: Supervisor, prefix: str = "chat") -> Broker:
    """Redis streams under ``prefix`` on ``client``, or memory if ``client`` is ``None``.

    The broker does not own ``client``: close the broker first, then the client.
    """
    if client is None:
        return MemoryBroker()
    return RedisBroker(client, tasks=tasks, prefix=prefix)
