"""One WebSocket to a session: frames in and out, replies matched to requests by ``ref``.

A reader task reads every frame. A frame whose ``ref`` a caller waits for resolves that
caller's future; other frames go to ``on_event``. When the socket ends (closed by either
side or cut) every waiting caller gets :class:`Lost` and ``lost`` is set, so the owner
can reconnect; nothing else is retried here.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import aiohttp

from chat_storage_client import _json
from chat_storage_client.errors import ChatStorageError, from_body
from chat_storage_client.models import Event
from chat_storage_client.transport import Transport

# close codes after which reconnecting cannot help: the client sent what it must not
FATAL_CLOSE_CODES = frozenset({1008, 1009})
CLOSE_TIMEOUT_S = 2.0


def refused(exc: aiohttp.WSServerHandshakeError) -> ChatStorageError | None:
    """The error of an upgrade the server refused for good (401, 403, 404), else None."""
    if exc.status in (401, 403, 404):
        return from_body(exc.status, {"message": f"WebSocket upgrade refused: {exc.message}"})
    return None


class Lost(Exception):
    """The connection ended before the answer came."""

    def __init__(self, close_code: int | None = None) -> None:
        super().__init__(f"connection lost (close code {close_code})")
        self.close_code = close_code


class Socket:
    """An open session WebSocket and its reader task."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse,
                 on_event: Callable[[Event], None]) -> None:
        self.ws = ws
        self.lost = asyncio.Event()
        self._on_event = on_event
        self._waiting: dict[str, asyncio.Future[Event]] = {}
        self._refs = itertools.count(1)
        self._reader = asyncio.create_task(self._read(), name="chat-storage-ws-reader")

    @classmethod
    async def open(cls, transport: Transport, session_id: str,
                   on_event: Callable[[Event], None], timeout_s: float) -> Socket:
        """Connect (with the client's credentials) and start reading."""
        url = f"{transport.base_url}/api/v1/sessions/{session_id}/ws"
        # a connection being replaced may be half-open: its close handshake is not
        # waited for long
        ws = await transport.http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(
            ws_receive=None, ws_close=min(timeout_s, CLOSE_TIMEOUT_S)), heartbeat=30.0,
            max_msg_size=0)
        return cls(ws, on_event)

    async def send(self, frame: dict[str, Any]) -> None:
        """Send a frame; :class:`Lost` if the connection is gone."""
        if self.lost.is_set() or self.ws.closed:
            raise Lost(self.ws.close_code)
        try:
            await self.ws.send_str(_json.dumps(frame))
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise Lost(self.ws.close_code) from exc

    async def call(self, frame: dict[str, Any], timeout_s: float) -> Event:
        """Send a frame with a new ``ref`` and return the reply carrying it.

        An ``error`` reply raises its :class:`ChatStorageError`; no reply within
        ``timeout_s`` (a half-open connection) is :class:`Lost`.
        """
        ref = f"r{next(self._refs)}"
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = future
        try:
            await self.send({**frame, "ref": ref})
            try:
                async with asyncio.timeout(timeout_s):
                    reply = await future
            except TimeoutError:
                await self.close()
                raise Lost(None) from None
        finally:
            self._waiting.pop(ref, None)
        if reply.get("type") == "error":
            raise from_body(0, reply)
        return reply

    async def close(self) -> None:
        """Close the socket and wait for the reader to end."""
        await self.ws.close()
        self.lost.set()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = _json.loads(msg.data)
                if not isinstance(event, dict):
                    continue
                future = self._waiting.get(event.get("ref") or "")
                if future is not None and not future.done():
                    future.set_result(event)
                else:
                    self._on_event(event)
        finally:
            self.lost.set()
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(Lost(self.ws.close_code))
