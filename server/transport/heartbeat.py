"""WebSocket heartbeats from one timer for the whole process, not two per socket.

aiohttp's own heartbeat (``WebSocketResponse(heartbeat=…)``) keeps a timer per socket,
re-armed as data arrives, and another while a ping waits for its pong: about 1.3 KiB
per idle connection (loadtest/RESULTS.md). Here one task ticks every half
``CHAT_WS_HEARTBEAT_S``; each socket only counts the ticks it has been silent. After
two silent ticks (between a half and a whole heartbeat of silence) it gets a ping; a
third (half a heartbeat later, as aiohttp waits for a pong) means the peer is gone:
the connection is aborted, which ends its read loop. Anything received, a pong or a
frame, makes it fresh again (:meth:`Beating.heard`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from chat_storage.server.state import SERVICES_KEY, SETTINGS_KEY

log = logging.getLogger(__name__)

PING = b"\x89\x00"  # a final, unmasked, empty ping frame (RFC 6455 5.5.2)
PING_AFTER = 2  # silent ticks before a ping
DEAD_AFTER = 3  # silent ticks before the peer is given up
# each tick is spread over this many steps, each visiting its share of the sockets:
# sockets opened together are not all pinged (and all pong) in one burst, which would
# stall a stream to other sockets for as long as thousands of writes and reads take
SLICES = 16


class Beating:
    """One socket's side: how long it has been silent, and its transport."""

    __slots__ = ("silent", "transport")

    def __init__(self, transport: asyncio.Transport | None) -> None:
        self.transport = transport
        self.silent = 0

    def heard(self) -> None:
        """The peer sent something: it is alive."""
        self.silent = 0

    def tick(self) -> None:
        """One more silent tick: ping, or give the peer up."""
        self.silent += 1
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.silent >= DEAD_AFTER:
            log.info("websocket closed: no pong after a heartbeat ping")
            transport.abort()  # connection_lost ends the socket's read loop
        elif self.silent == PING_AFTER:
            transport.write(PING)


class Heartbeats:
    """The process's open WebSockets, and the one loop that pings them."""

    def __init__(self, interval_s: float) -> None:
        self.tick_s = interval_s / 2
        self._slices: list[dict[Beating, None]] = [{} for _ in range(SLICES)]
        self._added = 0

    def __len__(self) -> int:
        return sum(len(s) for s in self._slices)

    def add(self, transport: asyncio.Transport | None) -> Beating:
        """Watch a socket until :meth:`discard`."""
        beating = Beating(transport)
        self._slices[self._added % SLICES][beating] = None
        self._added += 1
        return beating

    def discard(self, beating: Beating) -> None:
        """Stop watching a socket (it closed)."""
        for piece in self._slices:
            if piece.pop(beating, 0) is None:
                return

    async def run(self) -> None:
        """Tick until cancelled: every socket once per ``tick_s``, a slice at a time."""
        while True:
            for piece in self._slices:
                await asyncio.sleep(self.tick_s / SLICES)
                for beating in list(piece):  # a copy: sockets may close meanwhile
                    beating.tick()


HEARTBEATS_KEY = web.AppKey("ws_heartbeats", Heartbeats)


def setup(app: web.Application) -> None:
    """Keep the app's WebSockets' heartbeats (after the services' context: it owns the task)."""
    app[HEARTBEATS_KEY] = Heartbeats(app[SETTINGS_KEY].ws_heartbeat_s)
    app.cleanup_ctx.append(_ticking)


async def _ticking(app: web.Application) -> AsyncIterator[None]:
    tasks = app[SERVICES_KEY].tasks
    task = tasks.spawn(app[HEARTBEATS_KEY].run(), name="ws-heartbeats")
    yield
    await tasks.stop(task)
