"""The batching writers: what empties a connection's outbox onto the wire.

The fan-out only ever appends to a connection's bounded outbox; the writer is the
only one that writes to the socket. Each round it takes everything queued and hands
it to the transport in one write (a slow socket makes batches grow instead of
stalling anyone else). A WebSocket's writer (:class:`WebSocketSender`) runs as a
callback of the loop and needs a task only while its socket is backed up; an SSE
stream's is a task (:func:`pump` over :class:`SseWire`), which also sends its
keep-alive comments.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import web

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


class WebSocketSender:
    """A WebSocket's writer: no task while the socket keeps up.

    A frame landing in the empty outbox schedules one flush for the end of the loop's
    current round (``call_soon``), so everything queued meanwhile goes out in one
    transport write, as complete unmasked text frames (aiohttp's own control frames
    cannot land inside one). Only while the socket is over its high-water mark does a
    task exist: it waits for aiohttp's flow control, then writes what piled up (the
    outbox's limit cuts a client that never catches up). An idle connection costs no
    task, coroutine or timer.
    """

    __slots__ = ("_draining", "_name", "_outbox", "_protocol", "_scheduled", "_tasks",
                 "_transport")

    def __init__(self, outbox: Outbox, request: web.Request, *, tasks: Supervisor,
                 name: str) -> None:
        self._outbox = outbox
        self._transport = request.transport
        self._protocol = request.protocol
        self._tasks = tasks
        self._name = name
        self._scheduled = False
        self._draining: asyncio.Task[None] | None = None
        outbox.on_ready = self._schedule

    def _schedule(self) -> None:
        if not self._scheduled and self._draining is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._draining is None and self._write(self._outbox.take_now()):
            self._draining = self._tasks.spawn(self._drain(), name=self._name)

    def _write(self, batch: list[bytes]) -> bool:
        """Write ``batch``; whether the socket is now over its high-water mark."""
        if not batch:
            return False
        transport = self._transport
        if transport is None or transport.is_closing():
            self._outbox.close()  # the peer is gone: nothing more is queued for it
            return False
        if len(batch) == 1:
            transport.write(ws_text_header(batch[0]) + batch[0])
        else:
            transport.write(b"".join([part for f in batch for part in (ws_text_header(f), f)]))
        return self._protocol.writing_paused

    async def _drain(self) -> None:
        try:
            while True:
                # aiohttp's flow control (private: the helper its own writer awaits)
                await self._protocol._drain_helper()
                if not self._write(self._outbox.take_now()):
                    return
        except ConnectionError:
            self._outbox.close()
        finally:
            self._draining = None
            if len(self._outbox):
                self._schedule()  # queued while the last write went out

    async def close(self) -> None:
        """Stop writing (the outbox is closed by the caller); ends a drain under way."""
        task = self._draining
        if task is not None and not task.done():
            await self._tasks.stop(task)

    def abort(self) -> None:
        """Cancel a drain under way (it may be stuck on a full socket), without waiting."""
        task = self._draining
        if task is not None and task is not asyncio.current_task():
            self._tasks.cancel(task)


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
