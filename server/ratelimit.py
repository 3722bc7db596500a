"""Per-API-key rate limit of the HTTP API. Every ``/api/v1`` response carries
``RateLimit-*`` headers.

The limiter (:mod:`storage.ratelimit`) is chosen at start: in memory for one process,
or shared through Redis when ``REDIS_URL`` is set. Both answer the same ``Decision``.
"""

from __future__ import annotations

from aiohttp import web

from chat_storage.server.errors import ApiError
from chat_storage.storage.ratelimit import Decision, Limiter
from chat_storage.storage.tenants import Principal

LIMITER_KEY = web.AppKey("limiter", Limiter)
DECISION_KEY = web.RequestKey("ratelimit", Decision)


async def take_token(request: web.Request, principal: Principal) -> None:
    """Take a token for ``principal``'s key; 429 with ``Retry-After`` when there is none.

    Called by the API middleware (``server.middlewares``) after authentication.
    """
    result = await request.app[LIMITER_KEY].take(principal.key_id)
    request[DECISION_KEY] = result
    if not result.allowed:
        raise ApiError(429, "rate limit exceeded",
                       headers={"Retry-After": str(result.retry_after_s)})


def apply_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Copy the request's rate-limit decision into the response headers."""
    result = request.get(DECISION_KEY)
    if result is None:
        return
    response.headers["RateLimit-Limit"] = str(result.limit)
    response.headers["RateLimit-Remaining"] = str(result.remaining)
    response.headers["RateLimit-Reset"] = str(result.reset_s)


def setup(app: web.Application, limiter: Limiter) -> None:
    """Use ``limiter`` for every ``/api/v1`` request of ``app``."""
    app[LIMITER_KEY] = limiter
