"""CORS: which pages on other origins may call this server, and what they may read.

One list, ``CHAT_CORS_ORIGINS`` (:class:`Origins`), answers two questions: whether a
response gets ``Access-Control-*`` headers (here) and whether a page may open a
WebSocket (:func:`chat_storage.server.streaming.origin_allowed`).

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is
  answered by the API middleware before authentication and the rate limit: a browser
  never sends a key with it. An allowed origin gets 204 and the allowance; any other
  gets 403 and no ``Access-Control-*`` header.
- Every other response to an allowed origin, errors and 429 included, gets
  ``Access-Control-Allow-Origin`` and ``Access-Control-Expose-Headers``, from
  ``on_response_prepare`` so streamed responses get them too.
- Never ``Access-Control-Allow-Credentials``: keys and tokens are headers, not cookies.

Not ``aiohttp-cors``: it answers a preflight from an ``OPTIONS`` route it adds next to
each route, so the preflight would run behind the API middleware's authentication
(401: a preflight carries no key) unless the middleware special-cased it anyway. It
also answers 200 rather than the 204 of docs/api.md, sets no ``Vary: Origin``, adds
nothing to responses of paths without a registered route (404, 405), and keeps its own
per-route copy of the origins, where the WebSocket check needs the same list and a
per-tenant list needs the authenticated tenant.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from chat_storage.server.errors import ApiError

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = ("X-Api-Key, Authorization, Content-Type, Idempotency-Key, X-Request-ID, "
                 "Last-Event-ID")
EXPOSE_HEADERS = ("X-Request-ID, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, "
                  "RateLimit-Policy, Retry-After, Idempotent-Replayed, Location")
# how long a browser may reuse a preflight's answer (Chromium caps it at 7200 s)
PREFLIGHT_MAX_AGE_S = 3600


class Origins:
    """The origins whose pages may read this server's responses (``*``: any page)."""

    def __init__(self, origins: Iterable[str]) -> None:
        listed = {_normal(o) for o in origins}
        self.any = "*" in listed
        self._listed = frozenset(listed - {"*"})

    def __bool__(self) -> bool:
        """Whether any other origin is allowed at all."""
        return self.any or bool(self._listed)

    def allows(self, origin: str | None) -> bool:
        """Whether a page at ``origin`` (the ``Origin`` header) is listed."""
        if origin is None:
            return False
        return self.any or _normal(origin) in self._listed


ORIGINS_KEY = web.AppKey("cors_origins", Origins)


def _normal(origin: str) -> str:
    # browsers send the serialized origin; settings already validated the list
    return origin.strip().rstrip("/").lower()


def is_preflight(request: web.Request) -> bool:
    """Whether ``request`` is a browser's CORS preflight."""
    return (request.method == "OPTIONS" and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers)


def preflight(request: web.Request) -> web.Response:
    """Answer a preflight: 204 and the allowance, or 403 for an origin not listed."""
    origins = request.app[ORIGINS_KEY]
    origin = request.headers["Origin"]
    if not origins.allows(origin):
        raise ApiError(403, "origin not allowed")
    return web.Response(status=204, headers={
        "Access-Control-Allow-Origin": "*" if origins.any else origin,
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
    })


def apply_headers(request: web.Request, response: web.StreamResponse) -> None:
    """CORS headers of an actual response (``on_response_prepare``)."""
    origins = request.app[ORIGINS_KEY]
    if not origins:
        return
    # the answer depends on Origin, so a shared cache must key on it too
    vary = response.headers.get("Vary")
    if vary is None:
        response.headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        response.headers["Vary"] = f"{vary}, Origin"
    if "Access-Control-Allow-Origin" in response.headers:
        return  # a preflight's answer: complete already
    origin = request.headers.get("Origin")
    if origins.allows(origin):
        response.headers["Access-Control-Allow-Origin"] = "*" if origins.any else str(origin)
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS


def setup(app: web.Application, origins: Iterable[str]) -> None:
    """Allow pages at ``origins`` (``CHAT_CORS_ORIGINS``) to call ``app``."""
    app[ORIGINS_KEY] = Origins(origins)
