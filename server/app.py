"""The app factory. The app is composed, never subclassed.

One ``cleanup_ctx`` owns the process's services: it builds them
(:meth:`Services.open <chat_storage.runtime.services.Services.open>`, where the start
order is written), puts them under the typed keys of :mod:`chat_storage.server.state`,
and stops them with :meth:`Services.close`, the only place the shutdown order is written.

Shutdown has one deadline, ``CHAT_SHUTDOWN_TIMEOUT_S``, which starts when the listeners
close (``on_shutdown``): every WebSocket and event stream is closed (1001, going away)
and the services stop taking work (new writes 503); aiohttp then waits for the requests
in flight, whose writes are still committed and answered; last, the cleanup step closes
the services with what is left of that deadline.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

from aiohttp import web

from chat_storage.actors.write.shared import SinkFactory
from chat_storage.runtime.deadline import Deadline
from chat_storage.runtime.secrets import sealer_from_settings
from chat_storage.runtime.services import Services
from chat_storage.runtime.settings import Settings
from chat_storage.server import (
    auth,
    cors,
    credential_watch,
    middlewares,
    objects,
    revocation,
    state,
    streaming,
)
from chat_storage.server.auththrottle import AuthThrottle
from chat_storage.server.oidc import OidcVerifier
from chat_storage.server.oidc_keys import JWKS_KEY
from chat_storage.server.routes import (
    attachments,
    dev_tokens,
    docs,
    events,
    exports,
    messages,
    ops,
    search,
    sessions,
    tokens,
    ui_stream,
    ws,
)
from chat_storage.server.routes import web as web_page
from chat_storage.server.state import SETTINGS_KEY
from chat_storage.server.tokens import OIDC_KEY, TOKENS_KEY, Tokens
from chat_storage.server.transport import heartbeat

ROUTE_TABLES = (ops.routes, docs.routes, sessions.routes, messages.routes, attachments.routes,
                search.routes, exports.routes, ws.routes, events.routes, tokens.routes,
                ui_stream.routes)


class Shutdown:
    """When this app's shutdown began: its one deadline (``None`` while serving)."""

    def __init__(self) -> None:
        self.deadline: Deadline | None = None


SHUTDOWN_KEY = web.AppKey("shutdown", Shutdown)


def create_app(settings: Settings, *, sink: SinkFactory | None = None) -> web.Application:
    """Build the application for ``settings``.

    ``sink``: what commits the session mailboxes' batches (default: the shared
    committer; a benchmark swaps it).
    """
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS_KEY] = settings
    app[SHUTDOWN_KEY] = Shutdown()
    # first: every other context may use the services
    app.cleanup_ctx.append(functools.partial(_services, sink=sink))
    auth.setup(app, settings.api_key_cache_s,
               AuthThrottle(settings.auth_failures_per_s, settings.auth_failure_burst))
    # read by the middleware and the WebSocket check; tenants' lists cached like keys
    cors.setup(app, settings.cors_origins, settings.api_key_cache_s)
    middlewares.setup(app)
    streaming.setup(app)  # open WebSockets and event streams, the ticket authenticator
    revocation.setup(app)  # a revoked key's streams closed
    credential_watch.setup(app)  # streams of expired tokens, retired signing keys closed
    heartbeat.setup(app)  # one timer pings every WebSocket
    objects.setup(app)  # the local store's upload and download URLs
    for table in ROUTE_TABLES:
        table.register(app)
    ops.setup(app, settings)  # /metrics (here or its own port), pool gauge
    docs.setup(app)  # Swagger UI files, OpenAPI document cache
    web_page.setup(app)  # demo page at / and the JS client under /web/
    dev_tokens.setup(app, settings)  # the demo page's tokens, on a developer's machine
    app.on_shutdown.append(_begin_shutdown)
    return app


async def _services(app: web.Application, *,
                    sink: SinkFactory | None) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    services = await Services.open(settings, sink=sink)
    state.expose(app, services)
    app[TOKENS_KEY] = Tokens(
        services.pool, sealer_from_settings(settings), cache_ttl_s=settings.api_key_cache_s,
        leeway_s=settings.token_leeway_s, acquire_timeout_s=settings.db_acquire_timeout_s)
    oidc = OidcVerifier.open(services.pool, settings)  # with its own HTTP client
    app[OIDC_KEY] = oidc.verify
    app[JWKS_KEY] = oidc.keys  # for credential_watch: an issuer's withdrawn keys
    yield
    deadline = app[SHUTDOWN_KEY].deadline or Deadline(app[SETTINGS_KEY].shutdown_timeout_s)
    await oidc.close()  # the requests that could use it are over
    await services.close(deadline)


async def _begin_shutdown(app: web.Application) -> None:
    """The listeners are closed: start the deadline, end streams, stop taking work."""
    app[SHUTDOWN_KEY].deadline = Deadline(app[SETTINGS_KEY].shutdown_timeout_s)
    await streaming.close_connections(app)
    services = app.get(state.SERVICES_KEY)
    if services is not None:
        services.stop_intake()
