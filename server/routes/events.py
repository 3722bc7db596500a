"""``GET …/events``: a session's events as Server-Sent Events, for read-only clients.

The same events as the WebSocket's subscription, each as ``id:``, ``event: <type>``
and ``data: <the JSON frame>``. The ``id`` is the client's position after the event:
``<seq>`` (every message up to ``seq`` received) followed by ``,<seq>:<offset>`` for
each stream in progress (its first ``offset`` code points received), e.g.
``42,41:1337``. A reconnecting ``EventSource`` sends it back as ``Last-Event-ID`` and
gets exactly what it lacks: later messages, the rest of each stream as one delta, then
the final event of a stream that ended meanwhile. ``after_seq`` starts a new reader
from a position of its choice (``Last-Event-ID`` wins when both are given).

Comments (``: keep-alive``) go out every ``CHAT_WS_HEARTBEAT_S`` so proxies keep the
connection and a vanished client is noticed. A reader that does not keep up with its
send queue is disconnected; its ``EventSource`` reconnects with its last id. A stream
whose API key is revoked ends with an ``error`` event of code ``unauthorized``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Annotated

import pydantic
from aiohttp import web

from chat_storage.actors.live import metrics as stream_metrics
from chat_storage.actors.live.outbox import ConnectionCut, Outbox
from chat_storage.server.auth import principal_of
from chat_storage.server.errors import ApiError
from chat_storage.server.handlers import path_uuid, run
from chat_storage.server.jsonio import parse_query
from chat_storage.server.middlewares import to_api_error
from chat_storage.server.routing import RouteTable
from chat_storage.server.schemas import Error
from chat_storage.server.state import HUB_KEY, SERVICES_KEY, SETTINGS_KEY
from chat_storage.server.streaming import CONNECTIONS_KEY
from chat_storage.server.transport import framing, writer
from chat_storage.storage import sessions

log = logging.getLogger(__name__)
routes = RouteTable("streaming")
_POSITION = re.compile(r"^(\d{1,18})((?:,\d{1,18}:\d{1,12}){0,64})$")


class EventsQuery(pydantic.BaseModel):
    after_seq: Annotated[int, pydantic.Field(ge=0)] = 0
    ticket: str | None = None


def parse_position(raw: str) -> tuple[int, dict[int, int]]:
    """``(after_seq, {seq: offset})`` from an event id; 400 if it is not one of ours."""
    match = _POSITION.match(raw.strip())
    if match is None:
        raise ApiError(400, "Last-Event-ID is invalid",
                       errors=[{"field": "Last-Event-ID", "message": "is not an event id "
                                "of this stream"}])
    known: dict[int, int] = {}
    for part in match.group(2).split(",")[1:]:
        seq, _, offset = part.partition(":")
        known[int(seq)] = int(offset)
    return int(match.group(1)), known


# S106: names a token scope, not a password
@routes.get("/api/v1/sessions/{session_id}/events", query=EventsQuery, token_scope="stream",  # noqa: S106
            responses={200: "text/event-stream", 400: Error, 404: Error, 429: Error})
async def session_events(request: web.Request) -> web.StreamResponse:
    """Follow a session's events (Server-Sent Events), resumable with Last-Event-ID."""
    session_id = path_uuid(request, "session_id", "session")
    query = parse_query(request, EventsQuery)
    after_seq, known = query.after_seq, dict[int, int]()
    last_id = request.headers.get("Last-Event-ID")
    if last_id:
        after_seq, known = parse_position(last_id)
    tenant_id = principal_of(request).tenant_id
    await run(request, lambda conn: sessions.check_exists(conn, tenant_id, session_id))
    app = request.app
    settings = app[SETTINGS_KEY]
    transport = request.transport

    def cut() -> None:
        # the writer may be stuck on a full socket; the client resumes by its last id
        stream_metrics.CUT.labels("sse").inc()
        if transport is not None:
            transport.abort()

    outbox = Outbox(settings.ws_send_queue, on_overflow=cut)

    revoked: str | None = None  # why its credential no longer holds

    async def close() -> None:
        outbox.close()

    async def revoke(reason: str) -> None:
        nonlocal revoked
        revoked = reason
        outbox.close()

    connections = app[CONNECTIONS_KEY]
    token = connections.open(principal_of(request), "sse", close, revoke)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    key = (tenant_id, session_id)
    hub = app[HUB_KEY]
    tasks = app[SERVICES_KEY].tasks
    sub = None
    sender: asyncio.Task[None] | None = None
    try:
        await response.prepare(request)
        await response.write(framing.SSE_RETRY)
        sender = writer.start(outbox, writer.SseWire(response), tasks=tasks,
                              keep_alive_s=settings.ws_heartbeat_s, name="sse-writer")
        try:
            sub = await hub.subscribe(key, outbox, after_seq=after_seq, known=known,
                                      render=framing.sse_event)
        except (ConnectionCut, ConnectionError):
            raise
        except Exception as exc:  # headers are sent: the error can only be an event now
            api = to_api_error(exc)
            if api is None:
                raise
            await tasks.stop(sender)
            await response.write(framing.sse_error(api.code, api.message))
            return response
        await sender
        if revoked:  # its credential no longer holds (server.revocation): say so, end
            await response.write(framing.sse_error("unauthorized", revoked))
    except (ConnectionCut, ConnectionError):
        pass
    finally:
        outbox.close()
        if sub is not None:
            hub.unsubscribe(key, sub)
        if sender is not None and not sender.done():
            await tasks.stop(sender)
        connections.close(tenant_id, "sse", token)
    return response
