"""aiohttp's HTTP protocol, except that a request refused before routing gets the JSON
error body of docs/api.md.

aiohttp answers a request its parser refuses (a malformed request line, bytes that are
not allowed in the URL such as raw non-UTF-8 in the query, a bad header, a line over
the limit) itself, with a ``text/plain`` body that quotes the offending bytes, before
any middleware runs: no hook of the application sees it. :class:`AppRunner` serves the
app with a protocol whose ``handle_error`` renders our error body instead; the
connection is closed afterwards, as aiohttp does.

The same protocol enforces the connection limits of :mod:`chat_storage.server.connlimits`:
each connection asks the server's gate to be admitted as it is made, and one whose
request headers do not arrive in time is closed.

The rest of aiohttp is untouched: these classes replace only those methods.
"""

from __future__ import annotations

import asyncio
import http
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from chat_storage.server.connlimits import CONNECTIONS_DROPPED, ConnectionGate, Limits
from chat_storage.server.errors import code_for_status, error_body
from chat_storage.server.jsonio import json_response
from chat_storage.server.middlewares import new_request_id

# what the parser refused, in plain words (aiohttp's own text quotes the request bytes)
_REFUSED: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.LineTooLong, "a request line or header is too long"),
    (http_exceptions.InvalidURLError, "the request URL is not valid (the query or path "
                                      "holds characters that must be percent-encoded, "
                                      "or bytes that are not UTF-8)"),
    (http_exceptions.BadHttpMethod, "the request method is not valid"),
    (http_exceptions.BadStatusLine, "the request line is not valid"),
    (http_exceptions.InvalidHeader, "a request header is not valid"),
    (http_exceptions.TransferEncodingError, "the request body's transfer encoding is not "
                                            "valid"),
    (http_exceptions.ContentLengthError, "the request body does not match its length"),
    (http_exceptions.BadHttpMessage, "the request could not be parsed (a header is not "
                                     "valid)"),
)


def refused_message(status: int, exc: BaseException | None) -> str:
    """What to tell the client about a request refused before routing."""
    if status >= 500:
        return "internal server error"
    for kind, message in _REFUSED:
        if isinstance(exc, kind):
            return message
    try:
        return f"the request could not be handled ({http.HTTPStatus(status).phrase})"
    except ValueError:
        return "the request could not be handled"


class JsonErrorProtocol(RequestHandler):
    """aiohttp's request handler whose own error answers carry the JSON error body, and
    which keeps to the server's connection limits."""

    def __init__(self, manager: JsonErrorServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = manager.gate
        self._header_timeout_s = manager.header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_count = 0  # requests parsed when the header clock started
        self._admitted = False
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._gate is not None:
            peer = transport.get_extra_info("peername")
            ip = peer[0] if isinstance(peer, tuple) and peer else None
            if not self._gate.admit(self, ip):
                self._refused = True
                transport.close()  # refused: never served, its descriptor freed now
                return
            self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admitted and self._gate is not None:
            self._gate.release(self)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._refused:
            return  # refused in connection_made: aiohttp never saw it
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # a request's first bytes start its header clock; a complete request stops it
        if (self._header_timer is None and self._header_timeout_s is not None
                and self._current_request is None and self._payload_parser is None
                and not self._upgraded):
            self._header_count = self._request_count
            self._header_timer = self._loop.call_later(self._header_timeout_s,
                                                       self._headers_late)
        super().data_received(data)
        if self._header_timer is not None and self._request_count != self._header_count:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._request_count == self._header_count and not self._force_close:
            CONNECTIONS_DROPPED.labels("header_timeout").inc()
            self.force_close()

    def idle(self) -> bool:
        """Whether this connection waits for a request (keep-alive, or headers not
        complete) rather than handling one."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def drop(self) -> None:
        """Close now (shed by the gate)."""
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own: logs, and refuses (ConnectionError) once a response has begun
        super().handle_error(request, status, exc, message)
        rid = new_request_id()
        # a request the parser refused is a placeholder: its path is not the client's
        refused = isinstance(exc, http_exceptions.HttpProcessingError)
        body = error_body(
            path="" if refused else request.path, status=status, code=code_for_status(status),
            message=refused_message(status, exc), request_id=rid,
        )
        response = json_response(body, status=status, headers={"X-Request-ID": rid})
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """aiohttp's low-level server, making :class:`JsonErrorProtocol` connections (under
    ``gate`` and ``header_timeout_s`` when given)."""

    def __init__(self, *args: Any, gate: ConnectionGate | None = None,
                 header_timeout_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        return JsonErrorProtocol(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers requests refused before routing in JSON
    and, given ``limits``, keeps to them (``gate``: its connection caps)."""

    def __init__(self, app: web.Application, *, limits: Limits | None = None,
                 gate: ConnectionGate | None = None, **kwargs: Any) -> None:
        if limits is not None:
            kwargs["keepalive_timeout"] = limits.idle_timeout_s
        super().__init__(app, **kwargs)
        self._limits = limits
        self._gate = gate

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # the app's start-up runs here
        return JsonErrorServer(
            plain.request_handler, request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation, loop=plain._loop,
            gate=self._gate,
            header_timeout_s=None if self._limits is None else self._limits.header_timeout_s,
            **plain._kwargs,
        )
