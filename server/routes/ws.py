"""The session WebSocket (``GET …/ws``) and its single-use tickets (``POST …/ws-tickets``).

Before the upgrade: API key or ticket (middleware), ``Origin``, the session belongs to
the caller's tenant (404 otherwise), the tenant's connection limit (429). After it,
one connection is this handler's task reading frames, plus the writer emptying the
connection's bounded outbox (``server.transport.writer``: a loop callback, with a task
only while the socket is backed up); nothing else ever writes to the socket.

Close codes: 1001 server shutting down; 4401 its credential no longer holds: its API
key was revoked, its token expired or its signing key was retired (within
``CHAT_API_KEY_CACHE_S``; server.revocation, server.credential_watch); 1008 a binary
frame (protocol violation); 1009 a frame over ``CHAT_WS_MAX_FRAME_BYTES``; 1013 the
client did not read fast enough and its send queue (``CHAT_WS_SEND_QUEUE`` frames)
overflowed — reconnect and ``subscribe`` from where it was. Frames and their replies:
``docs/streaming.md``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import pydantic
from aiohttp import WSMsgType, web

from chat_storage.actors.live import metrics as stream_metrics
from chat_storage.actors.live.outbox import Outbox
from chat_storage.actors.live.subscription import Subscription
from chat_storage.server.auth import principal_of
from chat_storage.server.errors import ApiError
from chat_storage.server.handlers import path_uuid, run
from chat_storage.server.jsonio import json_response
from chat_storage.server.ratelimit import DECISION_KEY
from chat_storage.server.routing import RouteTable
from chat_storage.server.schemas import Error
from chat_storage.server.state import HUB_KEY, REGISTRY_KEY, SERVICES_KEY, SETTINGS_KEY
from chat_storage.server.streaming import CONNECTIONS_KEY, check_origin
from chat_storage.server.transport import writer
from chat_storage.server.transport.heartbeat import HEARTBEATS_KEY
from chat_storage.server.ws_frames import FrameHandlers
from chat_storage.storage import sessions, tickets
from chat_storage.storage.records import SessionKey

log = logging.getLogger(__name__)
# message.create frames of one connection waiting for their commit at once
MAX_CREATES_IN_FLIGHT = 256
routes = RouteTable("streaming")
SESSION_PATH = "/api/v1/sessions/{session_id}"
TICKET_TTL_S = 60.0
CLOSE_LINGER_S = 5.0
REVOKED_CLOSE = 4401  # the credential no longer holds (server.revocation)


class WsTicket(pydantic.BaseModel):
    """A single-use ticket for ``…/ws?ticket=`` (or ``…/events?ticket=``)."""

    ticket: str
    expires_at: dt.datetime


class StreamQuery(pydantic.BaseModel):
    ticket: str | None = None


# `read`, though a POST: a ticket stands in for its key on the stream routes and
# carries that key's scope, checked when it is used (a read key's ticket opens the
# event stream, not the WebSocket), so a read-only browser can watch over SSE
# S106: names a token scope, not a password
@routes.post(SESSION_PATH + "/ws-tickets", scope="read", token_scope="stream",  # noqa: S106
             responses={201: WsTicket, 404: Error})
async def create_ticket(request: web.Request) -> web.Response:
    """Make a single-use ticket (60 s) for a browser to open this session's stream."""
    session_id = path_uuid(request, "session_id", "session")
    principal = principal_of(request)
    ticket, expires_at = await run(request, lambda conn: tickets.create(
        conn, principal, session_id, TICKET_TTL_S))
    return json_response({"ticket": ticket, "expires_at": expires_at}, status=201)


# `write`, though a GET: the socket creates messages and streams answers; a read-only
# client watches over Server-Sent Events (`read`)
# S106: names a token scope, not a password
@routes.get(SESSION_PATH + "/ws", query=StreamQuery, scope="write", token_scope="stream",  # noqa: S106
            responses={101: None, 400: Error, 403: Error, 404: Error, 429: Error})
async def websocket(request: web.Request) -> web.StreamResponse:
    """Open the session's WebSocket: subscribe to it, write to it, stream answers into it."""
    session_id = path_uuid(request, "session_id", "session")
    await check_origin(request)
    tenant_id = principal_of(request).tenant_id
    await run(request, lambda conn: sessions.check_exists(conn, tenant_id, session_id))
    settings = request.app[SETTINGS_KEY]
    # pings come from the process's one heartbeat timer (transport.heartbeat), not from
    # aiohttp's two timers per socket; so this loop answers pings and sees pongs itself
    ws = web.WebSocketResponse(heartbeat=None, autoping=False, compress=False,
                               max_msg_size=settings.ws_max_frame_bytes, timeout=2.0)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "expected a WebSocket upgrade request")
    conn = Connection(request, ws, (tenant_id, session_id))
    connections = request.app[CONNECTIONS_KEY]
    token = connections.open(principal_of(request), "ws", conn.shutdown, conn.revoke)
    try:
        await ws.prepare(request)
        # the 101 went out: what only it needed would stay as long as the socket does
        # (~0.7 KiB of an idle connection's ~20; loadtest/RESULTS.md)
        ws.headers.clear()
        request.pop(DECISION_KEY, None)
        await conn.run()
    finally:
        connections.close(tenant_id, "ws", token)
    return ws


class Connection(FrameHandlers):
    """One WebSocket: what it subscribes to and the streams it produces.

    This class is the connection's lifecycle (read loop, heartbeats, closing); what
    each frame does is :class:`chat_storage.server.ws_frames.FrameHandlers`.
    """

    # slots: thousands of idle connections each hold one (loadtest/RESULTS.md); the
    # frame handlers' state is in FrameHandlers.__slots__
    __slots__ = ("_closing", "_heartbeats", "_sender", "_tasks", "ws")

    def __init__(self, request: web.Request, ws: web.WebSocketResponse,
                 key: SessionKey) -> None:
        app = request.app
        self.key = key
        self.ws = ws
        self.settings = app[SETTINGS_KEY]
        self.hub = app[HUB_KEY]
        self.registry = app[REGISTRY_KEY]
        self.outbox = Outbox(self.settings.ws_send_queue, on_overflow=self._overflowed)
        self.sub: Subscription | None = None
        self.own: set[str] = set()  # streams this connection produces
        self.closed = False
        self._subscribing = False
        self._request = request
        self._tasks = request.app[SERVICES_KEY].tasks
        self._sender = writer.WebSocketSender(self.outbox, request, tasks=self._tasks,
                                              name="ws-writer")
        self._heartbeats = app[HEARTBEATS_KEY]
        self._in_flight = asyncio.Semaphore(MAX_CREATES_IN_FLIGHT)
        self._closing: asyncio.Task[None] | None = None
        self.privacy = request.app[SERVICES_KEY].privacy
        principal = self.principal = principal_of(request)
        # a user token (or its ticket) needs `write` to create messages or stream answers
        self.writes = not principal.is_user or "write" in principal.user_scopes
        self._delta_chars = 0  # delta text not yet charged to the rate limit

    async def run(self) -> None:
        """Read frames until the connection ends; then hand over its streams (grace)."""
        beating = self._heartbeats.add(self._request.transport)
        try:
            while True:
                msg = await self.ws.receive()
                beating.heard()
                if msg.type == WSMsgType.TEXT:
                    await self._handle(msg.data)
                elif msg.type == WSMsgType.PING:
                    await self.ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    continue
                elif msg.type == WSMsgType.BINARY:
                    await self._close(1008, "binary frames are not accepted; send JSON text")
                    break
                else:  # closed by the client, by us, too big (1009), or broken
                    break
        finally:
            self._heartbeats.discard(beating)
            self.closed = True
            self.hub.release(self)
            if self.sub is not None:
                self.hub.unsubscribe(self.key, self.sub)
            self.outbox.close()
            await self._sender.close()
            if self._closing is not None:
                await self._finish(self._closing)

    async def shutdown(self) -> None:
        """Close with 1001 (server going away)."""
        await self._close(1001, "server shutting down")

    async def revoke(self, reason: str) -> None:
        """Close with 4401 (its API key was revoked, its token expired or its signing key
        retired: ``reason`` says which)."""
        await self._close(REVOKED_CLOSE, reason)

    # ------------------------------------------------------------ closing
    def _overflowed(self) -> None:
        stream_metrics.CUT.labels("ws").inc()
        log.info("websocket cut: send queue overflow", extra={"session_id": str(self.key[1])})
        if self._closing is None:
            self._closing = self._tasks.spawn(
                self._close(1013, "send queue overflow; subscribe again from your last seq"),
                name="ws-close")

    async def _close(self, code: int, reason: str) -> None:
        self.outbox.close()
        self._sender.abort()  # it may be stuck on a full socket
        transport = self._request.transport
        if transport is not None:
            # the close frame queues behind what the socket still holds; a client that
            # does not read for CLOSE_LINGER_S more is dropped without it
            asyncio.get_running_loop().call_later(CLOSE_LINGER_S, transport.abort)
        try:
            async with asyncio.timeout(CLOSE_LINGER_S):
                await self.ws.close(code=code, message=reason.encode(), drain=False)
        except TimeoutError:
            pass


    async def _finish(self, task: asyncio.Task[None]) -> None:
        """Wait for ``task`` to end, cancelled if still running (a failure is logged and
        counted by the supervisor); our own cancellation still propagates."""
        if not task.done():
            await self._tasks.stop(task)
