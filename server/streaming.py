"""Streaming's place in the app: the live side, built around the write path; open connections.

Start order, in two steps around the registry (``server.writer``), all by constructor
arguments: :func:`setup_fanout` (after the broker, ``server.redis``) builds the table
of held streams, the feeds' source and the fan-out, which is the registry's commit
listener (told of every commit, keeps busy sessions' mailboxes); :func:`setup` (after
the registry) builds the producers' streams, which write through the registry, the
sweeper, and the hub over them all.

Shutdown, in steps: ``on_shutdown`` closes every WebSocket (1001, going away) and
ends every event stream; the cleanup step then stores each answer still being
streamed here as ``interrupted`` with all it received, and flushes the broker queue —
before the registry flushes and the pool closes (their cleanups run after this one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from chat_storage.actors.live import metrics as stream_metrics
from chat_storage.actors.live.config import HubConfig
from chat_storage.actors.live.fanout import Fanout
from chat_storage.actors.live.hub import Hub
from chat_storage.actors.live.source import SessionSource
from chat_storage.actors.live.stream_state import HeldStreams, StreamConfig
from chat_storage.actors.live.streams import Streams
from chat_storage.actors.live.sweeper import Sweeper
from chat_storage.server import auth
from chat_storage.server.database import POOL_KEY
from chat_storage.server.errors import ApiError
from chat_storage.server.redis import BROKER_KEY
from chat_storage.server.settings import SETTINGS_KEY, Settings
from chat_storage.server.writer import LISTENER_KEY, REGISTRY_KEY
from chat_storage.storage import db, tickets
from chat_storage.storage.ids import parse_uuid
from chat_storage.storage.tenants import Principal

STREAM_PATHS = ("/ws", "/events")  # where a ticket may stand in for the API key


class Connections:
    """Open streaming connections: counted per tenant, all closed on shutdown."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._counts: dict[uuid.UUID, int] = {}
        self._closers: dict[int, Callable[[], Awaitable[None]]] = {}
        self._ids = itertools.count()

    def open(self, tenant_id: uuid.UUID, kind: str,
             closer: Callable[[], Awaitable[None]]) -> int:
        """Count a new connection of ``tenant_id``; 429 past the limit. Returns its token."""
        count = self._counts.get(tenant_id, 0)
        if count >= self.per_tenant:
            raise ApiError(429, "too many streaming connections for this tenant",
                           headers={"Retry-After": "5"})
        self._counts[tenant_id] = count + 1
        token = next(self._ids)
        self._closers[token] = closer
        stream_metrics.CONNECTIONS.labels(kind).inc()
        return token

    def close(self, tenant_id: uuid.UUID, kind: str, token: int) -> None:
        """Forget a connection that ended."""
        if self._closers.pop(token, None) is None:
            return
        stream_metrics.CONNECTIONS.labels(kind).dec()
        count = self._counts.get(tenant_id, 1) - 1
        if count > 0:
            self._counts[tenant_id] = count
        else:
            self._counts.pop(tenant_id, None)

    def count(self, tenant_id: uuid.UUID) -> int:
        return self._counts.get(tenant_id, 0)

    async def close_all(self) -> None:
        """Close every open connection (shutdown)."""
        closers = list(self._closers.values())
        await asyncio.gather(*(c() for c in closers), return_exceptions=True)


@dataclasses.dataclass(frozen=True, slots=True)
class LiveBase:
    """The live side built before the registry (what the fan-out needs, and the fan-out)."""

    config: HubConfig
    held: HeldStreams
    source: SessionSource
    fanout: Fanout


LIVE_BASE_KEY = web.AppKey("live_base", LiveBase)
HUB_KEY = web.AppKey("hub", Hub)
CONNECTIONS_KEY = web.AppKey("stream_connections", Connections)


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Whether a browser page at the request's ``Origin`` may open a stream.

    No ``Origin`` (not a browser): allowed, the API key or ticket is the check.
    With ``CHAT_ALLOWED_ORIGINS`` set: only those origins (``*`` allows any).
    Unset: only the server's own origin (same host and port as the request).
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    if allowed:
        return "*" in allowed or origin in {a.rstrip("/").lower() for a in allowed}
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == request.host.lower()


def check_origin(request: web.Request) -> None:
    """403 before any upgrade when the page's origin is not allowed."""
    if not origin_allowed(request, request.app[SETTINGS_KEY].allowed_origins):
        raise ApiError(403, "origin not allowed")


async def ticket_authenticator(request: web.Request) -> Principal | None:
    """Authenticate a stream request by its single-use ``?ticket=`` (browsers)."""
    ticket = request.query.get("ticket")
    if ticket is None or not request.path.endswith(STREAM_PATHS):
        return None
    session_id = parse_uuid(request.match_info.get("session_id", ""))
    if session_id is None:
        raise ApiError(403, "ticket is not valid")
    settings = request.app[SETTINGS_KEY]
    principal = await db.call(
        request.app[POOL_KEY], lambda conn: tickets.consume(conn, ticket, session_id),
        acquire_timeout_s=settings.db_acquire_timeout_s)
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


def hub_config(settings: Settings) -> HubConfig:
    """The streaming knobs from the settings."""
    return HubConfig(
        send_queue=settings.ws_send_queue,
        stream=StreamConfig(
            checkpoint_interval_s=settings.checkpoint_interval_s,
            checkpoint_chars=settings.checkpoint_chars,
            grace_s=settings.stream_grace_s,
            max_content_bytes=settings.max_content_bytes,
            acquire_timeout_s=settings.db_acquire_timeout_s,
        ),
    )


def setup_fanout(app: web.Application) -> None:
    """Build the fan-out, the registry's commit listener: call before ``writer.setup``.

    Nothing to start or stop here: the hub (:func:`setup`) owns its lifecycle.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = hub_config(app[SETTINGS_KEY])
        held = HeldStreams()
        source = SessionSource(app[POOL_KEY], app[BROKER_KEY], held,
                               acquire_timeout_s=config.stream.acquire_timeout_s)
        fanout = Fanout(app[BROKER_KEY], source, held, config)
        app[LIVE_BASE_KEY] = LiveBase(config, held, source, fanout)
        app[LISTENER_KEY] = fanout
        yield

    app.cleanup_ctx.append(ctx)


def setup(app: web.Application) -> None:
    """Register the hub's lifecycle, the ticket authenticator and shutdown of connections.

    Call after ``writer.setup``; the fan-out comes from :func:`setup_fanout`.
    """
    settings = app[SETTINGS_KEY]
    app[CONNECTIONS_KEY] = Connections(settings.ws_max_connections_per_tenant)
    app[auth.AUTHENTICATORS_KEY].append(ticket_authenticator)

    async def on_shutdown(app: web.Application) -> None:
        await app[CONNECTIONS_KEY].close_all()

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        base = app[LIVE_BASE_KEY]
        streams = Streams(app[POOL_KEY], base.config.stream, base.held, base.fanout.emit,
                          writer=app[REGISTRY_KEY])
        sweeper = Sweeper(streams, base.source, base.held, base.fanout.emit, base.config)
        hub = Hub(base.fanout, streams, sweeper)
        hub.start()
        app[HUB_KEY] = hub
        yield
        await hub.close(settings.shutdown_timeout_s / 2)

    app.on_shutdown.append(on_shutdown)
    app.cleanup_ctx.append(ctx)
