"""The app factory. The app is composed, never subclassed.

Start order (cleanup_ctx): database (pool, migrations) → write registry.
Shutdown runs it backwards: the registry flushes every mailbox and answers every
waiter, then the pool closes. aiohttp stops accepting connections and finishes
in-flight requests before either (``shutdown_timeout``).
"""

from __future__ import annotations

from aiohttp import web

from server import auth, database, middlewares, ratelimit, writer
from server.routes import docs, exports, messages, ops, search, sessions
from server.settings import SETTINGS_KEY, Settings

ROUTE_TABLES = (ops.routes, docs.routes, sessions.routes, messages.routes, search.routes,
                exports.routes)


def create_app(settings: Settings) -> web.Application:
    """Build the application for ``settings``."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS_KEY] = settings
    auth.setup(app, settings.api_key_cache_s)
    ratelimit.setup(
        app, ratelimit.MemoryLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    )
    middlewares.setup(app)
    database.setup(app)
    writer.setup(app)
    for table in ROUTE_TABLES:
        table.register(app)
    return app
