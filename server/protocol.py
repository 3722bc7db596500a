"""aiohttp's HTTP protocol, except that a request refused before routing gets the JSON
error body of docs/api.md.

aiohttp answers a request its parser refuses (a malformed request line, bytes that are
not allowed in the URL such as raw non-UTF-8 in the query, a bad header, a line over
the limit) itself, with a ``text/plain`` body that quotes the offending bytes, before
any middleware runs: no hook of the application sees it. :class:`AppRunner` serves the
app with a protocol whose ``handle_error`` renders our error body instead; the
connection is closed afterwards, as aiohttp does.

The rest of aiohttp is untouched: these classes only replace the one method.
"""

from __future__ import annotations

import http

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

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
    """aiohttp's request handler whose own error answers carry the JSON error body."""

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
    """aiohttp's low-level server, making :class:`JsonErrorProtocol` connections."""

    def __call__(self) -> RequestHandler:
        return JsonErrorProtocol(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers requests refused before routing in JSON."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # the app's start-up runs here
        return JsonErrorServer(
            plain.request_handler, request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation, loop=plain._loop,
            **plain._kwargs,
        )
