"""The one middleware of every request: request id, errors, access log and metrics,
then a CORS preflight's answer or, for ``/api/v1``, authentication, the rate limit and
the query's parameters.

They are steps of one function, in that order, rather than four middlewares: each
aiohttp middleware costs a wrapper and a coroutine per request, and this is the
hot path of every write (``loadtest/bench_writes.py``).
Headers every response must carry (``X-Request-ID``, ``RateLimit-*``, CORS) are added in
``on_response_prepare`` so streamed responses and WebSocket handshakes get them too.
"""

from __future__ import annotations

import logging
import random
import re
import time
import urllib.parse

from aiohttp import web
from aiohttp.typedefs import Handler

from chat_storage import tracing
from chat_storage.actors.write.errors import Overloaded, ShuttingDown, WriteError
from chat_storage.server import auth, cors, deadlines, idempotency, metrics, ratelimit
from chat_storage.server.errors import ApiError, error_body
from chat_storage.server.jsonio import json_response
from chat_storage.server.logs import REQUEST_ID
from chat_storage.server.routing import query_names
from chat_storage.storage.errors import (
    Conflict,
    InvalidReference,
    NotFound,
    ObjectStoreUnavailable,
    Unavailable,
)

log = logging.getLogger(__name__)
access_log = logging.getLogger("chat_storage.access")

REQUEST_ID_KEY = web.RequestKey("request_id", str)
RETRY_AFTER_S = "1"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def _loggable_path(request: web.Request) -> str:
    """The path, except for a signed URL: its token is a credential, so its route."""
    route = _route_name(request)
    return route if "{token}" in route else request.path


def _request_id(request: web.Request) -> str:
    """A valid client ``X-Request-ID``, or a new one: 32 random hex digits.

    An id needs to be unique, not unguessable: ``random`` (seeded per process, forks too)
    costs no system call per request, unlike ``uuid4``.
    """
    given = request.headers.get("X-Request-ID")
    if given is not None and _VALID_REQUEST_ID.match(given):
        return given
    return new_request_id()


def new_request_id() -> str:
    """32 random hex digits."""
    return f"{random.getrandbits(128):032x}"


def error_response(request: web.Request, err: ApiError) -> web.Response:
    """Render ``err`` as the error body of docs/api.md."""
    body = error_body(
        path=request.path, status=err.status, code=err.code, message=err.message,
        request_id=request.get(REQUEST_ID_KEY, ""), errors=err.errors,
    )
    return json_response(body, status=err.status, headers=err.headers)


def check_query(request: web.Request) -> None:
    """400 for a query the route cannot take, naming each parameter in ``errors``:
    ``validation_failed`` for one that is not UTF-8 once percent-decoded (yarl would
    hand it on with U+FFFD in place of the bytes), ``unknown_parameter`` for one the
    route's query model lacks (as an unknown body field is refused)."""
    allowed = query_names(request)
    if allowed is None:  # not one of our routes (a 404 or 405 follows)
        return
    garbled = _not_utf8(request.rel_url.raw_query_string)
    if garbled:
        raise ApiError(400, "query is invalid",
                       errors=[{"field": name, "message": "must be UTF-8 text"}
                               for name in garbled])
    unknown = [name for name in dict.fromkeys(request.query) if name not in allowed]
    if unknown:
        raise ApiError(400, "query has unknown parameters", code="unknown_parameter",
                       errors=[{"field": name, "message": "unknown parameter"}
                               for name in unknown])


def _not_utf8(raw_query: str) -> list[str]:
    """The parameters of ``raw_query`` whose name or value is not UTF-8 once decoded."""
    found: list[str] = []
    for pair in raw_query.split("&"):
        name, _, value = pair.replace("+", " ").partition("=")
        try:
            urllib.parse.unquote_to_bytes(name).decode()
            urllib.parse.unquote_to_bytes(value).decode()
        except UnicodeDecodeError:
            found.append(urllib.parse.unquote(name))
    return found


def to_api_error(exc: BaseException) -> ApiError | None:
    """Map a known exception of any layer to an :class:`ApiError` (``None``: unexpected)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, web.HTTPException):
        if exc.status == 413:
            return ApiError(413, "request body is too large")
        if exc.status == 405:
            allow = exc.headers.get("Allow", "")
            return ApiError(405, "method not allowed", headers={"Allow": allow})
        if exc.status == 404:
            return ApiError(404, "no such route")
        return ApiError(exc.status, exc.reason or "error")
    if isinstance(exc, NotFound):
        return ApiError(404, str(exc) or "not found")
    if isinstance(exc, InvalidReference):
        return ApiError(400, "request body is invalid",
                        errors=[{"field": exc.field, "message": exc.message}])
    if isinstance(exc, Conflict):
        return ApiError(409, str(exc))
    if isinstance(exc, Overloaded | ShuttingDown):
        message = "server is overloaded" if isinstance(exc, Overloaded) else (
            "server is shutting down")
        return ApiError(503, f"{message}; nothing was stored, retry later",
                        headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, ObjectStoreUnavailable):
        return ApiError(503, "object store is unavailable; retry later",
                        headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, Unavailable):
        return ApiError(503, "database is unavailable; retry later with the same "
                        "Idempotency-Key", headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, WriteError):
        return ApiError(503, "write could not be completed; retry later",
                        headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, TimeoutError):  # the request's deadline (server.deadlines)
        return ApiError(503, "request could not be completed in time (a dependency did not "
                        "answer); retry later, a write with the same Idempotency-Key",
                        headers={"Retry-After": RETRY_AFTER_S})
    return None


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id; then a preflight's answer, or auth, rate limit and the query's parameter
    names for ``/api/v1`` and the handler. Every exception becomes the error body; one
    access-log line and the metrics per request."""
    rid = request[REQUEST_ID_KEY] = _request_id(request)
    token = REQUEST_ID.set(rid)
    started = time.perf_counter()
    status = 500
    response: web.StreamResponse
    # the server span, current for the whole request (a WebSocket's or an SSE stream's
    # whole life): its logs carry its ids, its writes link to it
    traced = _start_span(request, rid) if tracing.ON else None
    try:
        try:
            if cors.is_preflight(request):  # before auth: a browser sends it without a key
                response = await cors.preflight(request)
            else:
                async with deadlines.of(request):  # 503 past it (to_api_error)
                    if request.path.startswith(auth.API_PREFIX):
                        await auth.authenticate_request(request)
                        await ratelimit.take_token(request, request[auth.PRINCIPAL_KEY])
                        if request.method == "POST":  # a bad key: 400 before the route's checks
                            idempotency.key_of(request)
                        if request.query_string:
                            check_query(request)
                    response = await handler(request)
        except Exception as exc:
            err = to_api_error(exc)
            if err is None:
                log.exception("unhandled error", extra={"path": _loggable_path(request)})
                err = ApiError(500, "internal server error")
            elif isinstance(exc, Unavailable):
                log.warning("database unavailable", extra={"error": str(exc)})
            response = error_response(request, err)
        status = response.status
        return response
    finally:
        elapsed_s = time.perf_counter() - started
        route = _route_name(request)
        metrics.observe_request(request.method, route, status, elapsed_s)
        if access_log.isEnabledFor(logging.INFO):
            principal = request.get(auth.PRINCIPAL_KEY)
            access_log.info(
                "request",
                extra={
                    "method": request.method,
                    "route": route,
                    "path": _loggable_path(request),
                    "status": status,
                    "duration_ms": round(elapsed_s * 1000, 3),
                    "tenant": principal.tenant_name if principal else None,
                },
            )
        if traced is not None:
            _end_span(request, traced, status)
        REQUEST_ID.reset(token)


def _start_span(request: web.Request, rid: str) -> tuple[tracing.Span, object]:
    """The request's SERVER span, child of the client's W3C ``traceparent`` if it sent one.

    Ours rather than opentelemetry-instrumentation-aiohttp-server's middleware: that one
    records the path as sent (``url.path``, ``http.target``), and a signed download
    URL's path is its token; here the path is the one the access log shows.
    """
    span = tracing.start(
        f"{request.method} {_route_name(request)}",
        parent=tracing.extract(request.headers), span_kind="SERVER",
        attributes={"http.request.method": request.method,
                    "http.route": _route_name(request),
                    "url.path": _loggable_path(request), "request_id": rid})
    return span, tracing.activate(span)


def _end_span(request: web.Request, traced: tuple[tracing.Span, object], status: int) -> None:
    span, activation = traced
    span.set_attribute("http.response.status_code", status)
    principal = request.get(auth.PRINCIPAL_KEY)
    if principal is not None:
        span.set_attribute("chat.tenant", principal.tenant_name)
    if status >= 500:
        tracing.fail(span, str(status))
    tracing.deactivate(activation)
    span.end()


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Headers that every response carries."""
    deadlines.lift(request)  # a stream or an upgrade has begun
    rid = request.get(REQUEST_ID_KEY)
    if rid is not None:
        response.headers["X-Request-ID"] = rid
    ratelimit.apply_headers(request, response)
    await cors.apply_headers(request, response)


def setup(app: web.Application) -> None:
    """Install the middleware and the response header hook."""
    app.middlewares.append(api_middleware)
    app.on_response_prepare.append(on_response_prepare)
