"""CORS: which pages on other origins may call this server, and what they may read.

Two lists allow a page's origin: ``CHAT_CORS_ORIGINS`` (:class:`Origins`, every tenant)
and each tenant's own (``tenants update T --cors-origins``, :class:`TenantOrigins`).
The same rule answers whether a response gets ``Access-Control-*`` headers (here) and
whether a page may open a WebSocket (:func:`chat_storage.server.streaming.origin_allowed`):

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is
  answered by the API middleware before authentication and the rate limit: a browser
  never sends a credential with it, so it cannot tell whose page asks. An origin in
  ``CHAT_CORS_ORIGINS`` or in any tenant's list gets 204 and the allowance; any other
  gets 403 and no ``Access-Control-*`` header.
- An actual response whose caller is authenticated (``auth.PRINCIPAL_KEY``: key, user
  token, OIDC token or ticket) gets ``Access-Control-Allow-Origin`` only for an origin
  in ``CHAT_CORS_ORIGINS`` or in *that caller's tenant's* list. A page listed by tenant
  B holding tenant A's token is answered, but its browser cannot read the answer.
- A response made before anyone is authenticated (401, a bad key's 403, a signed
  ``/objects/`` URL) holds nothing of a tenant: an origin listed anywhere may read it,
  so a page can see the 401 that tells it to get a new token.
- Headers are set in ``on_response_prepare``, so streamed responses, errors and 429
  get them too. Never ``Access-Control-Allow-Credentials``: keys and tokens are
  headers, not cookies.

The tenants' lists are read in one query (every tenant that lists any) and kept for
``CHAT_API_KEY_CACHE_S``, like a key's lookup: a changed list applies on every replica
within that time. The principal does not carry its tenant's list: principals are made
in four places (keys, user tokens, tickets, OIDC), and only a request with a foreign
``Origin`` needs the list, so one cached map serves them all. A database failure
keeps the last map (none yet: no tenant origin is allowed): CORS fails closed.

Not ``aiohttp-cors``: it answers a preflight from an ``OPTIONS`` route it adds next to
each route, so the preflight would run behind the API middleware's authentication
(401: a preflight carries no key) unless the middleware special-cased it anyway. It
also answers 200 rather than the 204 of docs/api.md, sets no ``Vary: Origin``, adds
nothing to responses of paths without a registered route (404, 405), and keeps its own
per-route copy of the origins, where the WebSocket check needs the same rule and a
per-tenant list needs the authenticated tenant.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable

from aiohttp import web

from chat_storage.server import auth
from chat_storage.server.errors import ApiError
from chat_storage.server.state import POOL_KEY, SETTINGS_KEY
from chat_storage.storage import db
from chat_storage.storage.errors import Unavailable
from chat_storage.storage.tenant_origins import listed_origins

log = logging.getLogger(__name__)

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = ("X-Api-Key, Authorization, Content-Type, Idempotency-Key, X-Request-ID, "
                 "Last-Event-ID")
EXPOSE_HEADERS = ("X-Request-ID, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, "
                  "RateLimit-Policy, Retry-After, Idempotent-Replayed, Location")
# how long a browser may reuse a preflight's answer (Chromium caps it at 7200 s)
PREFLIGHT_MAX_AGE_S = 3600
# after a failed read of the tenants' lists, how long before the next try
RETRY_S = 1.0


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


NONE = Origins(())


class TenantOrigins:
    """Every tenant's own origins and their union, read at most every ``ttl_s``."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._by_tenant: dict[uuid.UUID, Origins] = {}
        self.union = NONE
        self._expires = float("-inf")  # monotonic; nothing read yet
        self._lock = asyncio.Lock()  # one read at a time; the others wait for it

    async def fresh(self, app: web.Application) -> TenantOrigins:
        """This map, read again first if it is older than ``ttl_s``."""
        if time.monotonic() < self._expires:
            return self
        async with self._lock:
            if time.monotonic() < self._expires:
                return self  # another request read it while this one waited
            settings = app[SETTINGS_KEY]
            try:
                listed = await db.call(app[POOL_KEY], listed_origins,
                                       acquire_timeout_s=settings.db_acquire_timeout_s)
            except Unavailable as exc:
                log.warning("cannot read the tenants' CORS origins; keeping the last ones",
                            extra={"error": str(exc)})
                self._expires = time.monotonic() + min(RETRY_S, self.ttl_s)
                return self
            self._by_tenant = {t: Origins(o) for t, o in listed.items()}
            self.union = Origins(o for origins in listed.values() for o in origins)
            self._expires = time.monotonic() + self.ttl_s
        return self

    def of(self, tenant_id: uuid.UUID) -> Origins:
        """The origins tenant ``tenant_id`` lists (none: no tenant origin)."""
        return self._by_tenant.get(tenant_id, NONE)


ORIGINS_KEY = web.AppKey("cors_origins", Origins)
TENANT_ORIGINS_KEY = web.AppKey("cors_tenant_origins", TenantOrigins)


def _normal(origin: str) -> str:
    # browsers send the serialized origin; settings and the CLI validated the lists
    return origin.strip().rstrip("/").lower()


def is_preflight(request: web.Request) -> bool:
    """Whether ``request`` is a browser's CORS preflight."""
    return (request.method == "OPTIONS" and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers)


async def allowed_origin(request: web.Request, origin: str) -> str | None:
    """The ``Access-Control-Allow-Origin`` a page at ``origin`` gets for ``request``
    (``None``: none): ``CHAT_CORS_ORIGINS``, else the authenticated caller's tenant's
    list, else, before anyone is authenticated, any tenant's list."""
    origins = request.app[ORIGINS_KEY]
    if origins.allows(origin):
        return "*" if origins.any else origin
    tenants = await request.app[TENANT_ORIGINS_KEY].fresh(request.app)
    principal = request.get(auth.PRINCIPAL_KEY)
    listed = tenants.union if principal is None else tenants.of(principal.tenant_id)
    return origin if listed.allows(origin) else None


async def preflight(request: web.Request) -> web.Response:
    """Answer a preflight: 204 and the allowance, or 403 for an origin no list has.

    No credential comes with a preflight, so any tenant's list will do; the actual
    request's answer is readable only by its own tenant's pages."""
    origin = request.headers["Origin"]
    allowed = await allowed_origin(request, origin)  # no principal yet: the union
    if allowed is None:
        raise ApiError(403, "origin not allowed")
    return web.Response(status=204, headers={
        "Access-Control-Allow-Origin": allowed,
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
    })


async def apply_headers(request: web.Request, response: web.StreamResponse) -> None:
    """CORS headers of an actual response (``on_response_prepare``)."""
    origin = request.headers.get("Origin")
    tenants = request.app[TENANT_ORIGINS_KEY]
    if origin is not None:
        tenants = await tenants.fresh(request.app)
    # without an Origin nothing waits for the database: the last map read decides Vary
    if not request.app[ORIGINS_KEY] and not tenants.union:
        return
    # the answer depends on Origin, so a shared cache must key on it too
    vary = response.headers.get("Vary")
    if vary is None:
        response.headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        response.headers["Vary"] = f"{vary}, Origin"
    if origin is None or "Access-Control-Allow-Origin" in response.headers:
        return  # not a browser's cross-origin call, or a preflight's complete answer
    allowed = await allowed_origin(request, origin)
    if allowed is not None:
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS


def setup(app: web.Application, origins: Iterable[str], tenant_cache_s: float) -> None:
    """Allow pages at ``origins`` (``CHAT_CORS_ORIGINS``) and at each tenant's own
    origins, read again every ``tenant_cache_s``, to call ``app``."""
    app[ORIGINS_KEY] = Origins(origins)
    app[TENANT_ORIGINS_KEY] = TenantOrigins(tenant_cache_s)
