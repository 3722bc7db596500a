"""The app factory. The app is composed, never subclassed.

Start order (cleanup_ctx): database (pool, migrations) → the live side's fan-out (the
registry's commit listener) → write registry → hub (producers' streams write through
the registry). Shutdown runs it backwards: the hub stores held streams, then the
registry flushes every mailbox and answers every waiter, then the pool closes.
aiohttp stops accepting connections and finishes in-flight requests before either
(``shutdown_timeout``).
"""

from __future__ import annotations

from aiohttp import web

from chat_storage.actors.write.shared import SharedCommitter, SinkFactory
from chat_storage.server import (
    auth,
    database,
    ingest,
    maintenance,
    middlewares,
    objects,
    ratelimit,
    redis,
    streaming,
    writer,
)
from chat_storage.server.routes import (
    attachments,
    docs,
    events,
    exports,
    messages,
    ops,
    search,
    sessions,
    ws,
)
from chat_storage.server.routes import web as web_page
from chat_storage.server.settings import SETTINGS_KEY, Settings

ROUTE_TABLES = (ops.routes, docs.routes, sessions.routes, messages.routes, attachments.routes,
                search.routes, exports.routes, ws.routes, events.routes)


def create_app(settings: Settings, *, sink: SinkFactory | None = None) -> web.Application:
    """Build the application for ``settings``.

    ``sink``: what commits the session mailboxes' batches (default: the shared
    committer; a benchmark swaps it).
    """
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS_KEY] = settings
    auth.setup(app, settings.api_key_cache_s)
    ratelimit.setup(
        app, ratelimit.MemoryLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    )
    middlewares.setup(app)
    database.setup(app)
    objects.setup(app)  # attachment files: S3 or a local directory (and its URLs)
    redis.setup(app)  # broker + shared rate limit (replaces the memory limiter)
    streaming.setup_fanout(app)  # live side, part 1: the registry's commit listener
    writer.setup(app, sink or SharedCommitter)
    streaming.setup(app)  # hub: after the registry and broker; closes connections first
    ingest.setup(app)  # async ingestion consumer (CHAT_INGEST_MODE=async): after the hub
    maintenance.setup(app)  # retention, temporary chats, stale uploads: after the store
    for table in ROUTE_TABLES:
        table.register(app)
    ops.setup(app, settings)  # /metrics (here or its own port), pool gauge; after database
    docs.setup(app)  # Swagger UI files, OpenAPI document cache
    web_page.setup(app)  # demo page at / and the JS client under /web/
    return app
