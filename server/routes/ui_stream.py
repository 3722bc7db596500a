"""An answer in the Vercel AI SDK's UI message stream protocol, for ``useChat({resume: true})``.

``GET …/messages/{message_id}/ui-stream`` serves one message: a finished one at once
(its stored text), one still streaming from the beginning of its text, then following
it to its end (:mod:`chat_storage.server.transport.uistream`). ``GET …/ui-stream`` of
a session serves its latest assistant answer still streaming, or 204 when there is
none: the AI SDK's reconnect (``DefaultChatTransport.reconnectToStream``) sends only
the chat's id and takes 204 as "no active stream, nothing to resume", so a finished
answer, already in the history the page loaded, is not served to it a second time.

Auth, connection caps, revocation and keep-alives as the session's event stream
(``…/events``); a client that does not keep up is cut (it reconnects and gets the
answer from its beginning again, which the SDK's reconnect expects).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from chat_storage.actors.live import metrics as stream_metrics
from chat_storage.actors.live.outbox import ConnectionCut, Outbox
from chat_storage.server.auth import principal_of
from chat_storage.server.handlers import path_uuid, run
from chat_storage.server.middlewares import to_api_error
from chat_storage.server.routing import RouteTable
from chat_storage.server.schemas import Error
from chat_storage.server.state import HUB_KEY, SERVICES_KEY, SETTINGS_KEY, keyring_of
from chat_storage.server.streaming import CONNECTIONS_KEY
from chat_storage.server.transport import uistream, writer
from chat_storage.storage import messages
from chat_storage.storage import streams as stream_rows

log = logging.getLogger(__name__)
routes = RouteTable("streaming")
_RESPONSES: dict[int, Any] = {200: "text/event-stream", 400: Error, 404: Error, 429: Error}
KIND = "ui-stream"  # its label in the streaming connections' metrics
_HEADERS = ("x-vercel-ai-ui-message-stream",)  # the protocol's marker (uistream.HEADERS)


# S106: names a token scope, not a password
@routes.get("/api/v1/sessions/{session_id}/messages/{message_id}/ui-stream",
            token_scope="stream", responses=_RESPONSES, headers=_HEADERS)  # noqa: S106
async def message_ui_stream(request: web.Request) -> web.StreamResponse:
    """One answer as a Vercel AI SDK UI message stream: finished at once, live to its end."""
    session_id = path_uuid(request, "session_id", "session")
    message_id = path_uuid(request, "message_id", "message")
    tenant_id = principal_of(request).tenant_id
    message = await run(request, lambda conn: messages.get(
        conn, tenant_id, session_id, message_id, keyring_of(request)))
    return await _serve(request, session_id, message)


# S106: names a token scope, not a password
@routes.get("/api/v1/sessions/{session_id}/ui-stream", token_scope="stream",  # noqa: S106
            responses={**_RESPONSES, 204: None}, headers=_HEADERS)
async def session_ui_stream(request: web.Request) -> web.StreamResponse:
    """The session's answer in progress as a UI message stream; 204 when there is none."""
    session_id = path_uuid(request, "session_id", "session")
    tenant_id = principal_of(request).tenant_id
    _, live = await run(request, lambda conn: stream_rows.live_state(
        conn, tenant_id, session_id, keyring_of(request)))
    answers = [m for m in live if m["role"] == "assistant"]
    if not answers:
        return web.Response(status=204)
    return await _serve(request, session_id, answers[-1])


async def _serve(request: web.Request, session_id: uuid.UUID,
                 message: Mapping[str, Any]) -> web.StreamResponse:
    if message["status"] != "streaming":
        return web.Response(body=uistream.whole(message), headers=uistream.HEADERS)
    return await _follow(request, session_id, message)


async def _follow(request: web.Request, session_id: uuid.UUID,
                  message: Mapping[str, Any]) -> web.StreamResponse:
    """Stream ``message`` from the beginning of its text to its end."""
    app = request.app
    settings = app[SETTINGS_KEY]
    principal = principal_of(request)
    key = (principal.tenant_id, session_id)
    seq = int(message["seq"])
    follower = uistream.Follower(str(message["id"]))
    transport = request.transport

    def cut() -> None:
        # the writer may be stuck on a full socket; the client reconnects
        stream_metrics.CUT.labels(KIND).inc()
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
    token = connections.open(principal, KIND, close, revoke)
    response = web.StreamResponse(headers=uistream.HEADERS)
    hub = app[HUB_KEY]
    tasks = app[SERVICES_KEY].tasks
    sub = None
    sender: asyncio.Task[None] | None = None
    try:
        await response.prepare(request)
        await response.write(uistream.opening(follower.message_id))
        sender = writer.start(outbox, _AnswerWire(response, outbox), tasks=tasks,
                              keep_alive_s=settings.ws_heartbeat_s, name="ui-stream-writer")
        try:
            # as a client that knows this stream with none of its text: a snapshot of
            # the text so far, every later delta once, then its final event
            sub = await hub.subscribe(key, outbox, after_seq=seq, known={seq: 0},
                                      render=follower.render)
        except (ConnectionCut, ConnectionError):
            raise
        except Exception as exc:  # headers are sent: the error can only be a part now
            api = to_api_error(exc)
            if api is None:
                raise
            await tasks.stop(sender)
            await response.write(uistream.error(api.message))
            return response
        await sender
        if revoked:  # its credential no longer holds (server.revocation): say so, end
            await response.write(uistream.error(revoked))
    except (ConnectionCut, ConnectionError):
        pass
    finally:
        outbox.close()
        if sub is not None:
            hub.unsubscribe(key, sub)
        if sender is not None and not sender.done():
            await tasks.stop(sender)
        connections.close(principal.tenant_id, KIND, token)
    return response


class _AnswerWire(writer.SseWire):
    """SSE batches of one answer's parts, up to its last: then the outbox is closed,
    which ends the writer (what follows belongs to other messages, rendered as nothing)."""

    def __init__(self, response: web.StreamResponse, outbox: Outbox) -> None:
        super().__init__(response)
        self._outbox = outbox

    async def send(self, batch: list[bytes]) -> None:
        """Write ``batch`` up to the answer's last part; after that, end."""
        for i, frame in enumerate(batch):
            if uistream.ends(frame):
                await super().send(batch[:i + 1])
                self._outbox.close()
                return
        await super().send(batch)

