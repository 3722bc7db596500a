"""The batching writer: one task per connection empties its outbox onto the wire.

The fan-out only ever appends to a connection's bounded outbox; this task is the
only one that writes to the socket. Each round it takes everything queued and hands
it to the transport in one write (a slow socket makes batches grow instead of
stalling anyone else). Both transports use it: :class:`WebSocketWire` and
:class:`SseWire` say how a batch goes out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import WSMsgType, web

from chat_storage.actors.live.outbox import Outbox
from chat_storage.server.transport.framing import SSE_KEEP_ALIVE, ws_text_header
from chat_storage.supervisor import Supervisor


class Wire(Protocol):
    """How one transport sends a batch of frames (and says it is still there)."""

    async def send(self, batch: list[bytes]) -> None:
        """Write ``batch`` in order; ``ConnectionError`` when the peer is gone."""
        ...

    async def keep_alive(self) -> None:
        """Tell the peer (and proxies) the connection is alive while nothing is sent."""
        ...


async def pump(outbox: Outbox, wire: Wire, *, keep_alive_s: float | None = None) -> None:
    """Send what ``outbox`` holds until it is closed; the connection's writer task.

    With ``keep_alive_s``, an outbox empty that long makes a ``keep_alive``. A peer
    that went away closes the outbox (nothing more is queued for it) and ends the task.
    """
    try:
        while True:
            batch = await outbox.take(timeout_s=keep_alive_s)
            if batch:
                await wire.send(batch)
            elif outbox.closed:
                return
            elif keep_alive_s is not None:
                await wire.keep_alive()
    except ConnectionError:
        outbox.close()


class WebSocketWire:
    """Batches of text frames on one WebSocket, in one transport write each."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self._send_frame = ws.send_frame
        self._transport = request.transport
        # aiohttp's flow control, awaited by its own send_frame; private API, so if a
        # later aiohttp lacks it we fall back to one send_frame per frame
        self._drain: Callable[[], Awaitable[None]] | None = getattr(
            request.protocol, "_drain_helper", None)

    async def send(self, batch: list[bytes]) -> None:
        """Write ``batch``; several frames go out in one transport write."""
        transport = self._transport
        if len(batch) == 1 or transport is None or self._drain is None:
            for frame in batch:
                await self._send_frame(frame, WSMsgType.TEXT)
            return
        if transport.is_closing():
            raise ConnectionResetError("websocket transport is closing")
        # many frames in one write (one syscall instead of one each); complete
        # frames only, so aiohttp's own control frames cannot land inside one
        transport.write(b"".join([part for f in batch for part in (ws_text_header(f), f)]))
        # wait while the transport is over its high-water mark
        await self._drain()

    async def keep_alive(self) -> None:
        """Nothing to do: aiohttp's own ping (``heartbeat``) keeps a WebSocket alive."""


class SseWire:
    """Batches of SSE events on one streamed HTTP response."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response

    async def send(self, batch: list[bytes]) -> None:
        """Write ``batch`` (events already framed by ``framing.sse_event``) at once."""
        await self._response.write(b"".join(batch))

    async def keep_alive(self) -> None:
        """A comment line: proxies keep the connection and a vanished client is noticed."""
        await self._response.write(SSE_KEEP_ALIVE)


def start(outbox: Outbox, wire: Wire, *, tasks: Supervisor, name: str,
          keep_alive_s: float | None = None) -> asyncio.Task[None]:
    """The connection's writer task, owned by ``tasks``; the route waits for its end."""
    return tasks.spawn(pump(outbox, wire, keep_alive_s=keep_alive_s), name=name)
