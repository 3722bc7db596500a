"""Streaming at the edge: open connections per tenant, the origin check, tickets, and the
live content overlaid on REST history.

The hub itself is a service of :mod:`chat_storage.runtime.services`; on shutdown the
app closes every connection here (:func:`close_connections`) before the services stop.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from chat_storage.actors.live import metrics as stream_metrics
from chat_storage.server import auth, cors
from chat_storage.server.conngroups import Deadlines, Groups
from chat_storage.server.errors import ApiError
from chat_storage.server.state import HUB_KEY, POOL_KEY, SETTINGS_KEY
from chat_storage.storage import db, tickets
from chat_storage.storage.ids import parse_uuid
from chat_storage.storage.principal import Principal

STREAM_PATHS = ("/ws", "/events")  # where a ticket may stand in for the API key


Revoker = Callable[[str], Awaitable[None]]  # ends a stream as unauthorized, saying why
KEY_REVOKED = "API key revoked"


class Connections:
    """Open streaming connections: counted per tenant, all closed on shutdown, and ended
    as unauthorized when their credential no longer holds: an API key revoked
    (:mod:`.revocation`), a user token's signing key retired, an OIDC token's key no
    longer published by its issuer, a token expired (:mod:`.credential_watch`).

    A tenant may have at most its own cap (``tenants update --max-stream-connections``,
    carried by the principal) open at once in this process, else ``per_tenant`` (the
    setting).
    """

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._counts: dict[uuid.UUID, int] = {}
        self._closers: dict[int, Callable[[], Awaitable[None]]] = {}
        self._revokers: dict[int, Revoker] = {}
        self._by_key: Groups[str] = Groups()  # an API key's id
        self._by_signer: Groups[str] = Groups()  # a user token's (or its ticket's) kid
        self._by_oidc: Groups[tuple[str, str | None]] = Groups()  # (issuer, kid)
        self._deadlines = Deadlines()  # a bearer token's exp
        self._ids = itertools.count()

    def cap(self, principal: Principal) -> int:
        """How many connections ``principal``'s tenant may have open at once."""
        own = principal.limits.max_stream_connections
        return self.per_tenant if own is None else own

    def open(self, principal: Principal, kind: str, closer: Callable[[], Awaitable[None]],
             revoke: Revoker | None = None) -> int:
        """Count a new connection of ``principal``'s tenant; 429 past its cap. Returns
        its token. ``closer`` ends it on shutdown; ``revoke``, when its credential no
        longer holds."""
        tenant_id = principal.tenant_id
        count = self._counts.get(tenant_id, 0)
        if count >= self.cap(principal):
            raise ApiError(429, "too many streaming connections for this tenant",
                           headers={"Retry-After": "5"})
        self._counts[tenant_id] = count + 1
        token = next(self._ids)
        self._closers[token] = closer
        if revoke is not None:
            self._watch(principal, token, revoke)
        stream_metrics.CONNECTIONS.labels(kind).inc()
        return token

    def _watch(self, principal: Principal, token: int, revoke: Revoker) -> None:
        self._revokers[token] = revoke
        if not principal.is_user:
            self._by_key.add(principal.key_id, token)
        elif principal.oidc_key is not None:
            self._by_oidc.add(principal.oidc_key, token)
        elif principal.credential_id.startswith(tickets.TOKEN_CREDENTIAL):
            kid = principal.credential_id.removeprefix(tickets.TOKEN_CREDENTIAL)
            self._by_signer.add(kid, token)
        if principal.expires_at is not None:
            self._deadlines.add(principal.expires_at, token)

    def close(self, tenant_id: uuid.UUID, kind: str, token: int) -> None:
        """Forget a connection that ended."""
        if self._closers.pop(token, None) is None:
            return
        if self._revokers.pop(token, None) is not None:
            for groups in (self._by_key, self._by_signer, self._by_oidc):
                groups.discard(token)
        stream_metrics.CONNECTIONS.labels(kind).dec()
        count = self._counts.get(tenant_id, 1) - 1
        if count > 0:
            self._counts[tenant_id] = count
        else:
            self._counts.pop(tenant_id, None)

    def count(self, tenant_id: uuid.UUID) -> int:
        return self._counts.get(tenant_id, 0)

    def key_ids(self) -> list[str]:
        """The API keys that have connections open."""
        return self._by_key.keys()

    def signer_ids(self) -> list[str]:
        """The signing keys (kids) of the user tokens that have connections open."""
        return self._by_signer.keys()

    def oidc_keys(self) -> list[tuple[str, str | None]]:
        """The (issuer, kid) of the OIDC tokens that have connections open."""
        return self._by_oidc.keys()

    async def revoke(self, key_ids: set[str]) -> int:
        """Close every connection of ``key_ids`` as revoked; how many."""
        return await self._end(self._by_key.members(key_ids), KEY_REVOKED)

    async def revoke_signers(self, kids: set[str], reason: str) -> int:
        """End the connections of the user tokens signed by ``kids``; how many."""
        return await self._end(self._by_signer.members(kids), reason)

    async def revoke_oidc(self, keys: set[tuple[str, str | None]], reason: str) -> int:
        """End the connections of the OIDC tokens signed by ``keys``; how many."""
        return await self._end(self._by_oidc.members(keys), reason)

    async def expire(self, now: float, reason: str) -> int:
        """End the connections whose token expired at ``now`` or before; how many."""
        ended = await self._end(self._deadlines.due(now), reason)
        if len(self._deadlines) > 2 * len(self._revokers) + 1024:
            self._deadlines.keep_only(set(self._revokers))  # ended ones' entries
        return ended

    async def _end(self, tokens: list[int], reason: str) -> int:
        revokers = [r for r in (self._revokers.get(t) for t in tokens) if r is not None]
        await asyncio.gather(*(r(reason) for r in revokers), return_exceptions=True)
        return len(revokers)

    async def close_all(self) -> None:
        """Close every open connection (shutdown)."""
        closers = list(self._closers.values())
        await asyncio.gather(*(c() for c in closers), return_exceptions=True)


CONNECTIONS_KEY = web.AppKey("stream_connections", Connections)


async def origin_allowed(request: web.Request) -> bool:
    """Whether a browser page at the request's ``Origin`` may open a stream.

    No ``Origin`` (not a browser): allowed, the credential or ticket is the check.
    The server's own origin (same host and port as the request: the demo page):
    allowed. Else the rule of CORS (:func:`cors.allowed_origin`): ``CHAT_CORS_ORIGINS``
    (``*``: any) or the list of the tenant the key, token or ticket belongs to.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin.strip().rstrip("/").lower())
    if parts.scheme in ("http", "https") and parts.netloc == request.host.lower():
        return True
    return await cors.allowed_origin(request, origin) is not None


async def check_origin(request: web.Request) -> None:
    """403 before any upgrade when the page's origin is not allowed (call it once the
    caller is authenticated: its tenant's origins count)."""
    if not await origin_allowed(request):
        raise ApiError(403, "origin not allowed")


async def ticket_authenticator(request: web.Request) -> Principal | None:
    """Authenticate a stream request by its single-use ``?ticket=`` (browsers).

    For the WebSocket, the ticket is used up in a transaction that also checks the
    page's ``Origin`` against its tenant's list (the check the upgrade makes): a ticket
    shown by a page that may not open the socket is refused (403) and stays usable, so
    a stray page cannot burn a user's ticket.
    """
    ticket = request.query.get("ticket")
    if ticket is None or not request.path.endswith(STREAM_PATHS):
        return None
    session_id = parse_uuid(request.match_info.get("session_id", ""))
    if session_id is None:
        raise ApiError(403, "ticket is not valid")
    app = request.app
    check = request.path.endswith("/ws") and "Origin" in request.headers
    if check:
        # read (or cached) before the transaction: the check inside it then needs no
        # second pooled connection
        await app[cors.TENANT_ORIGINS_KEY].fresh(app)

    async def use(conn: db.Connection) -> Principal | None:
        async with conn.transaction():
            principal = await tickets.consume(conn, ticket, session_id)
            if principal is not None and check:
                request[auth.PRINCIPAL_KEY] = principal  # whose origins count
                if not await origin_allowed(request):
                    raise ApiError(403, "origin not allowed")  # the ticket's use undone
            return principal

    principal = await db.call(app[POOL_KEY], use,
                              acquire_timeout_s=app[SETTINGS_KEY].db_acquire_timeout_s)
    if principal is None:
        raise ApiError(403, "ticket is not valid (unknown, expired, used or for another "
                            "session)")
    return principal


def overlay_live(request: web.Request, tenant_id: uuid.UUID, session_id: uuid.UUID,
                 messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Put the content streamed so far into messages still ``streaming`` (REST history).

    Postgres holds the last checkpoint; this process may know more (it holds the
    stream, or mirrors it for its subscribers). Changes ``messages`` in place.
    """
    hub = request.app.get(HUB_KEY)
    if hub is None:
        return messages
    for message in messages:
        if message.get("status") == "streaming":
            live = hub.live_content((tenant_id, session_id), message["id"])
            if live is not None and len(live) >= len(message["content"]):
                message["content"] = live
    return messages


async def close_connections(app: web.Application) -> None:
    """Close every WebSocket (1001, going away) and end every event stream (shutdown)."""
    await app[CONNECTIONS_KEY].close_all()


def setup(app: web.Application) -> None:
    """Count streaming connections per tenant; let a ticket stand in for the API key."""
    settings = app[SETTINGS_KEY]
    app[CONNECTIONS_KEY] = Connections(settings.ws_max_connections_per_tenant)
    app[auth.AUTHENTICATORS_KEY].append(ticket_authenticator)
