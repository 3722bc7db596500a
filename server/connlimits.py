"""How many client connections one process keeps, and for how long one may say nothing.

Every accepted socket costs a file descriptor; at the process's ``RLIMIT_NOFILE`` the
next ``accept()`` fails (``EMFILE``) and so do the database pool, Redis and every file
the server opens, so a crowd of idle sockets would make even ``/healthz`` unanswerable.
So the server:

- raises its soft ``RLIMIT_NOFILE`` to the hard limit at start (:func:`raise_nofile_limit`);
- keeps at most :attr:`ConnectionGate.cap` client connections: ``CHAT_MAX_CONNECTIONS``,
  lowered to the file limit minus ``CHAT_FD_RESERVE`` (descriptors kept for Postgres,
  Redis, files and the listening sockets);
- at the cap, sheds the oldest *idle* connection (one waiting for a request: keep-alive,
  or headers not finished) to take the new one, and refuses the new one (closes it at
  once) only when every connection is busy with a request: an idle crowd cannot lock
  honest clients out;
- refuses a connection beyond ``CHAT_MAX_CONNECTIONS_PER_IP`` from one address (0: no
  per-address cap; behind a proxy every connection has the proxy's address);
- closes a connection whose request headers are not complete ``CHAT_HEADER_TIMEOUT_S``
  after its first byte (slowloris) and, through aiohttp's ``keepalive_timeout``, one that
  sends nothing for ``CHAT_IDLE_TIMEOUT_S`` (also a new connection that never sends).

The gate is consulted by :class:`chat_storage.server.protocol.JsonErrorProtocol` as a
connection is made and lost; both are plain callbacks of the event loop, so the counts
need no lock.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
from collections.abc import Callable
from typing import Protocol

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

CONNECTIONS_OPEN = Gauge("chat_http_connections", "Client TCP connections open in this process")
CONNECTIONS_DROPPED = Counter(
    "chat_http_connections_dropped_total",
    "Client connections closed by the server's limits: refused at the cap (cap), over the "
    "per-address cap (per_ip), shed while idle to make room (shed), headers too slow "
    "(header_timeout)", ["reason"])


class Guarded(Protocol):
    """What the gate needs of a connection (the protocol of :mod:`.protocol`)."""

    def idle(self) -> bool:
        """Whether it waits for a request (no request being handled)."""

    def drop(self) -> None:
        """Close it now."""


def raise_nofile_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. a hard limit above the kernel's nr_open
            log.warning("could not raise the open-file limit",
                        extra={"soft": soft, "hard": hard, "error": str(exc)})
    return soft


def effective_cap(max_connections: int, nofile: int, reserve: int) -> int:
    """The connection cap under a file limit of ``nofile`` keeping ``reserve`` spare;
    ``ValueError`` when the limit leaves no room for a single connection."""
    if nofile == resource.RLIM_INFINITY:
        return max_connections
    room = nofile - reserve
    if room < 1:
        raise ValueError(f"the open-file limit ({nofile}) leaves no room for connections "
                         f"after CHAT_FD_RESERVE ({reserve}); raise it (ulimit -n)")
    return min(max_connections, room)


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one server process (from settings)."""

    max_connections: int
    per_ip: int  # 0: none
    header_timeout_s: float
    idle_timeout_s: float


class ConnectionGate:
    """Admits client connections up to a total and a per-address cap."""

    def __init__(self, cap: int, per_ip: int) -> None:
        self.cap = cap
        self.per_ip = per_ip
        # open connections, oldest first (dicts keep insertion order)
        self._open: dict[Guarded, str | None] = {}
        self._by_ip: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, conn: Guarded, ip: str | None) -> bool:
        """Count ``conn`` in, shedding an idle one at the cap; ``False``: refuse it."""
        if self.per_ip and ip is not None and self._by_ip.get(ip, 0) >= self.per_ip:
            CONNECTIONS_DROPPED.labels("per_ip").inc()
            return False
        if len(self._open) >= self.cap and not self._shed_one():
            CONNECTIONS_DROPPED.labels("cap").inc()
            return False
        self._open[conn] = ip
        if ip is not None:
            self._by_ip[ip] = self._by_ip.get(ip, 0) + 1
        CONNECTIONS_OPEN.set(len(self._open))
        return True

    def release(self, conn: Guarded) -> None:
        """Count ``conn`` out (it closed); a connection never admitted is ignored."""
        if conn not in self._open:
            return
        ip = self._open.pop(conn)
        if ip is not None:
            left = self._by_ip.get(ip, 1) - 1
            if left > 0:
                self._by_ip[ip] = left
            else:
                self._by_ip.pop(ip, None)
        CONNECTIONS_OPEN.set(len(self._open))

    def _shed_one(self) -> bool:
        """Close the oldest idle connection and forget it now (its fd is freed as the
        loop closes it, before the next accept)."""
        victim = next((c for c in self._open if c.idle()), None)
        if victim is None:
            return False
        self.release(victim)
        CONNECTIONS_DROPPED.labels("shed").inc()
        victim.drop()
        return True


def gate_for(limits: Limits, reserve: int,
             nofile: Callable[[], int] = raise_nofile_limit) -> ConnectionGate:
    """The gate of this process: the file limit raised first, the cap below it."""
    soft = nofile()
    cap = effective_cap(limits.max_connections, soft, reserve)
    if cap < limits.max_connections:
        log.warning("connection cap lowered to fit the open-file limit",
                    extra={"max_connections": cap, "nofile": soft, "fd_reserve": reserve})
    return ConnectionGate(cap, limits.per_ip)
