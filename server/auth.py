"""Authentication and access for ``/api/v1``, checked once for every route: handlers
never check a credential, a scope or whose session it is.

- ``X-Api-Key``: a tenant key (``storage.apikeys``), looked up by id and compared by
  hash in constant time; unknown or revoked → 403; a scope that does not reach the
  route → 403.
- ``Authorization: Bearer``: a user token or a trusted issuer's OIDC token
  (:mod:`chat_storage.server.tokens`); one that does not verify → 401 saying why.
- Else the other authenticators (single-use stream tickets); none → 401.

What a route needs is declared in its route table (``server.routing``): a key scope,
and for a user the token scope, or ``None`` for a tenant-wide route (403). A user
reaches only its own sessions: a ``{session_id}`` of another user's session, or one
outside the token's session list, is 404 exactly like one that does not exist; a
``{user_id}`` or ``user_id`` field of another user is 403 (:func:`bind_user`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from chat_storage.server.auth_audit import FAILED_AUTH_KEY, FailedAuthAudit
from chat_storage.server.auththrottle import AUTH_THROTTLE_KEY, AuthThrottle
from chat_storage.server.errors import ApiError
from chat_storage.server.limits import header_text
from chat_storage.server.routing import ROUTE_ACCESS_KEY, ROUTE_SCOPES_KEY
from chat_storage.server.state import POOL_KEY, SETTINGS_KEY
from chat_storage.server.tokens import OIDC_KEY, TOKENS_KEY
from chat_storage.server.ttlcache import TtlCache
from chat_storage.storage import db, sessions
from chat_storage.storage.apikeys import authenticate
from chat_storage.storage.ids import parse_uuid
from chat_storage.storage.principal import Principal, Scope, scope_allows

PRINCIPAL_KEY = web.RequestKey("principal", Principal)
API_PREFIX = "/api/v1/"
CHALLENGE = "ApiKey, Bearer"
OWNER_CACHE_S = 300.0  # a session never changes user: its owner may be kept a while

KEY_CACHE_KEY = web.AppKey("key_cache", TtlCache[str, Principal])
OWNER_CACHE_KEY = web.AppKey("owner_cache", TtlCache[tuple[uuid.UUID, uuid.UUID], str])

# Extra ways to authenticate (e.g. single-use WebSocket tickets); each returns a
# principal or None. Registered by the modules that provide them.
Authenticator = Callable[[web.Request], Awaitable[Principal | None]]
AUTHENTICATORS_KEY = web.AppKey("authenticators", list[Authenticator])

M = TypeVar("M")


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
    """Authenticate an ``/api/v1`` request, check what it may reach, store its
    :class:`Principal`. Called by the API middleware (``server.middlewares``)."""
    try:
        principal = await _principal(request)
    except ApiError as exc:  # audited, a few per client address a minute
        if exc.status in (401, 403):
            await request.app[FAILED_AUTH_KEY].failed(request, exc)
        raise
    # known before the checks: a 403 below is answered as to this tenant (CORS)
    request[PRINCIPAL_KEY] = principal
    if principal.is_user:
        await _check_user(request, principal)
    else:
        needed = required_scope(request)
        if needed is not None and not scope_allows(principal.scope, needed):
            raise ApiError(403, f"this API key has scope {principal.scope!r}; "
                                f"this route needs {needed!r}")


async def _principal(request: web.Request) -> Principal:
    """The caller. A presented credential that is not cached is checked only while its
    address has failures left, and a refused one counts (:mod:`.auththrottle`)."""
    key = header_text(request.headers.get("X-Api-Key"), "X-Api-Key")
    if key is not None:
        cached = request.app[KEY_CACHE_KEY].get(key)
        if cached is not None:
            return cached  # costs nothing: never throttled
    if key is None and "Authorization" not in request.headers and (
            "ticket" not in request.query):
        return await _credential(request, key)  # nothing presented: nothing to count
    throttle = request.app[AUTH_THROTTLE_KEY]
    throttle.check(request.remote)
    try:
        return await _credential(request, key)
    except ApiError as err:
        if err.status in (401, 403):
            throttle.failed(request.remote)
        raise


async def _credential(request: web.Request, key: str | None) -> Principal:
    if key is not None:
        principal = await resolve_key(request.app, key)
        if principal is None:
            raise ApiError(403, "API key is not valid")
        return principal
    authorization = header_text(request.headers.get("Authorization"), "Authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Authorization must be 'Bearer <token>'",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_request"'})
        return await request.app[TOKENS_KEY].verify(token.strip(), request.app.get(OIDC_KEY))
    for authenticator in request.app.get(AUTHENTICATORS_KEY, []):
        principal = await authenticator(request)
        if principal is not None:
            return principal
    raise ApiError(401, "missing credentials: an X-Api-Key header or an "
                        "Authorization: Bearer token", headers={"WWW-Authenticate": CHALLENGE})


async def _check_user(request: web.Request, principal: Principal) -> None:
    """What a user may reach: its scopes, its own user id, its own sessions."""
    if request.match_info.http_exception is not None:
        return  # no route: the router's 404 or 405 follows
    route = request.match_info.route
    needed = request.app.get(ROUTE_ACCESS_KEY, {}).get(route)
    if needed is None:
        raise ApiError(403, "a user token cannot use this route: it acts for the whole "
                            "tenant and needs an API key")
    if needed not in principal.user_scopes:
        held = " ".join(sorted(principal.user_scopes))
        raise ApiError(403, f"this token has scopes {held!r}; this route needs {needed!r}")
    match = request.match_info
    if "user_id" in match and match["user_id"] != principal.user_id:
        raise ApiError(403, "a user token reaches only its own user's data")
    if "session_id" not in match:
        if principal.session_ids is not None:
            raise ApiError(403, "this token is limited to some sessions; this route is "
                                "not one of a session")
        return
    session_id = parse_uuid(match["session_id"])
    if session_id is None:
        return  # malformed: the handler's 404
    if principal.session_ids is not None and session_id not in principal.session_ids:
        raise ApiError(404, "session not found")
    if await _owner(request.app, principal.tenant_id, session_id) != principal.user_id:
        raise ApiError(404, "session not found")


async def _owner(app: web.Application, tenant_id: uuid.UUID,
                 session_id: uuid.UUID) -> str | None:
    cache = app[OWNER_CACHE_KEY]
    owner = cache.get((tenant_id, session_id))
    if owner is None:
        owner = await db.call(
            app[POOL_KEY], lambda conn: sessions.owner(conn, tenant_id, session_id),
            acquire_timeout_s=app[SETTINGS_KEY].db_acquire_timeout_s)
        if owner is not None:  # an absent session may be made a moment later
            cache.put((tenant_id, session_id), owner)
    return owner


def bind_user(request: web.Request, parsed: M) -> M:
    """A body or query with a ``user_id``, bound to the caller when it is a user: an
    absent one becomes the user's own (lists and searches see only their sessions),
    another user's is refused with 403."""
    principal = request.get(PRINCIPAL_KEY)
    if principal is None or principal.user_id is None:
        return parsed
    given: Any = getattr(parsed, "user_id", _NO_FIELD)
    if given is _NO_FIELD or given == principal.user_id:
        return parsed
    if given is None:
        return parsed.model_copy(update={"user_id": principal.user_id})  # type: ignore[attr-defined, no-any-return]
    raise ApiError(403, "user_id is not the token's user", errors=[
        {"field": "user_id", "message": "must be the user of the token"}])


_NO_FIELD = object()


def required_scope(request: web.Request) -> Scope | None:
    """The key scope the matched route needs; ``None`` when no route matched (the
    router's 404 or 405 follows). A matched route that no route table declared needs
    ``admin``: a route added without a scope is closed, not open."""
    if request.match_info.http_exception is not None:
        return None
    return request.app.get(ROUTE_SCOPES_KEY, {}).get(request.match_info.route, "admin")


def principal_of(request: web.Request) -> Principal:
    """The authenticated caller of an ``/api/v1`` request."""
    return request[PRINCIPAL_KEY]


def setup(app: web.Application, cache_ttl_s: float, throttle: AuthThrottle) -> None:
    """Create the key and owner caches and the authenticator list; ``throttle``: the
    failed authentications per address."""
    app[AUTH_THROTTLE_KEY] = throttle
    app[KEY_CACHE_KEY] = TtlCache(cache_ttl_s)
    app[OWNER_CACHE_KEY] = TtlCache(OWNER_CACHE_S)
    app[AUTHENTICATORS_KEY] = []
    app[FAILED_AUTH_KEY] = FailedAuthAudit()
