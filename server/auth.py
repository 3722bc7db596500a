"""API-key authentication for ``/api/v1``: 401 without a key, 403 for a bad one, 403
for a key whose scope does not reach the route.

Keys are looked up by id and compared by hash in constant time (``storage.apikeys``);
a successful lookup is cached for ``api_key_cache_s`` so a hot key costs no query.
The scope a route needs is declared in its route table (``server.routing``) and
checked here, once, for every route: handlers never check scopes.
"""

from __future__ import annotations

import time

from aiohttp import web

from chat_storage.server.errors import ApiError
from chat_storage.server.routing import ROUTE_SCOPES_KEY
from chat_storage.server.state import POOL_KEY, SETTINGS_KEY
from chat_storage.storage import db
from chat_storage.storage.apikeys import Principal, Scope, authenticate, scope_allows

PRINCIPAL_KEY = web.RequestKey("principal", Principal)
API_PREFIX = "/api/v1/"


class KeyCache:
    """Principals by key, each kept for ``ttl_s``; bounded by ``max_entries``."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, key: str) -> Principal | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._entries[key]
            return None
        return hit[1]

    def put(self, key: str, principal: Principal) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # cheap and safe: entries are only a cache
        self._entries[key] = (time.monotonic() + self.ttl_s, principal)


KEY_CACHE_KEY = web.AppKey("key_cache", KeyCache)

# Extra ways to authenticate (e.g. single-use WebSocket tickets); each returns a
# principal or None. Registered by the modules that provide them.
AUTHENTICATORS_KEY = web.AppKey("authenticators", list)


async def resolve_key(app: web.Application, key: str) -> Principal | None:
    """The principal of ``key`` (cached), or ``None`` if unknown or revoked."""
    cache = app[KEY_CACHE_KEY]
    principal = cache.get(key)
    if principal is not None:
        return principal
    settings = app[SETTINGS_KEY]
    principal = await db.call(
        app[POOL_KEY], lambda conn: authenticate(conn, key),
        acquire_timeout_s=settings.db_acquire_timeout_s,
    )
    if principal is not None:
        cache.put(key, principal)
    return principal


async def authenticate_request(request: web.Request) -> None:
    """Authenticate an ``/api/v1`` request, check its scope, store its :class:`Principal`.

    401 without a key (and no other authenticator took it), 403 for a bad one or one
    whose scope does not reach the route. Called by the API middleware
    (``server.middlewares``).
    """
    key = request.headers.get("X-Api-Key")
    principal: Principal | None = None
    if key is None:
        for authenticator in request.app.get(AUTHENTICATORS_KEY, []):
            principal = await authenticator(request)
            if principal is not None:
                break
        else:
            raise ApiError(401, "missing API key (X-Api-Key header)",
                           headers={"WWW-Authenticate": "ApiKey"})
    else:
        principal = await resolve_key(request.app, key)
    if principal is None:
        raise ApiError(403, "API key is not valid")
    needed = required_scope(request)
    if needed is not None and not scope_allows(principal.scope, needed):
        raise ApiError(403, f"this API key has scope {principal.scope!r}; "
                            f"this route needs {needed!r}")
    request[PRINCIPAL_KEY] = principal


def required_scope(request: web.Request) -> Scope | None:
    """The scope the matched route needs; ``None`` when no route matched (the router's
    404 or 405 follows). A matched route that no route table declared needs ``admin``:
    a route added without a scope is closed, not open."""
    if request.match_info.http_exception is not None:
        return None
    return request.app.get(ROUTE_SCOPES_KEY, {}).get(request.match_info.route, "admin")


def principal_of(request: web.Request) -> Principal:
    """The authenticated caller of an ``/api/v1`` request."""
    return request[PRINCIPAL_KEY]


def setup(app: web.Application, cache_ttl_s: float) -> None:
    """Create the key cache and the authenticator list."""
    app[KEY_CACHE_KEY] = KeyCache(cache_ttl_s)
    app[AUTHENTICATORS_KEY] = []
