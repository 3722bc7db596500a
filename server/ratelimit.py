"""Per-API-key rate limit of the HTTP API. Every ``/api/v1`` response carries
``RateLimit-*`` headers.

The limits of a key are the principal's (key override, else tenant override, resolved
by ``storage.apikeys`` when the key is authenticated and cached with it), else the
settings the limiter was opened with. ``RateLimit-Limit`` is the burst (the most
requests that may go at once), ``RateLimit-Policy`` is ``<rate>;w=1;burst=<burst>``.

The limiter (:mod:`storage.ratelimit`) is chosen at start: in memory for one process,
or shared through Redis when ``REDIS_URL`` is set. Both answer the same ``Decision``.
"""

from __future__ import annotations

from aiohttp import web

from chat_storage.server.errors import ApiError
from chat_storage.storage.principal import Principal
from chat_storage.storage.ratelimit import Decision, Limiter

LIMITER_KEY = web.AppKey("limiter", Limiter)
# the volume of stream.delta text that costs one token (at most one per frame; a
# stream's content is capped by CHAT_MAX_CONTENT_BYTES)
DELTA_CHARS_PER_TOKEN = 4096
DECISION_KEY = web.RequestKey("ratelimit", Decision)


async def take_token(request: web.Request, principal: Principal) -> None:
    """Take a token for ``principal``'s key; 429 with ``Retry-After`` when there is none.

    Called by the API middleware (``server.middlewares``) after authentication.
    """
    result = request[DECISION_KEY] = await _take(request.app, principal)
    if not result.allowed:
        raise _refused(result)


async def take_write(app: web.Application, principal: Principal) -> None:
    """Take a token from the bucket ``principal``'s HTTP requests take from; the same
    429 when there is none. A WebSocket frame that writes (``message.create``,
    ``stream.start``, each :data:`DELTA_CHARS_PER_TOKEN` of deltas) takes one
    (``server.routes.ws``), refused with an ``error`` frame ``rate_limited``."""
    result = await _take(app, principal)
    if not result.allowed:
        raise _refused(result)


async def _take(app: web.Application, principal: Principal) -> Decision:
    limits = principal.limits
    return await app[LIMITER_KEY].take(
        principal.key_id, rate_per_s=limits.rate_limit_per_s, burst=limits.rate_limit_burst)


def _refused(result: Decision) -> ApiError:
    return ApiError(429, "rate limit exceeded", headers={"Retry-After": str(result.retry_after_s)})


def apply_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Copy the request's rate-limit decision into the response headers."""
    result = request.get(DECISION_KEY)
    if result is None:
        return
    response.headers["RateLimit-Limit"] = str(result.limit)
    response.headers["RateLimit-Remaining"] = str(result.remaining)
    response.headers["RateLimit-Reset"] = str(result.reset_s)
    response.headers["RateLimit-Policy"] = policy(result.rate_per_s, result.limit)


def policy(rate_per_s: float, burst: int) -> str:
    """``RateLimit-Policy``: ``rate_per_s`` per 1-second window, ``burst`` at most at once
    (``100;w=1;burst=200``; a fractional rate as a plain decimal, ``0.5;w=1;burst=2``)."""
    rate = f"{rate_per_s:.6f}".rstrip("0").rstrip(".")
    return f"{rate or '0'};w=1;burst={burst}"


def setup(app: web.Application, limiter: Limiter) -> None:
    """Use ``limiter`` for every ``/api/v1`` request of ``app``."""
    app[LIMITER_KEY] = limiter
