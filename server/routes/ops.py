"""Operations: liveness, readiness, Prometheus metrics. No API key needed.

``/metrics`` is served on the main port, or — with ``CHAT_METRICS_PORT`` — only on a
port of its own (a second aiohttp runner started in this module's ``cleanup_ctx``), so
it can be kept off the public listener.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_async.aio.web import server_stats

from chat_storage.runtime.settings import Settings
from chat_storage.server import metrics
from chat_storage.server.jsonio import json_response
from chat_storage.server.routing import RouteTable
from chat_storage.server.state import POOL_KEY, SERVICES_KEY, SETTINGS_KEY
from chat_storage.storage import db, migrations
from chat_storage.storage.errors import Unavailable

log = logging.getLogger(__name__)

routes = RouteTable("operations")
# registered by setup(): on the main app, or on the metrics port's own app
metrics_routes = RouteTable("operations")
METRICS_TYPE = "text/plain; version=0.0.4"


@routes.get("/healthz", auth=False, responses={200: "application/json"})
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process is up and serving."""
    return json_response({"status": "ok"})


@routes.get("/readyz", auth=False, responses={200: "application/json", 503: "application/json"})
async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database is reachable and fully migrated."""
    settings = request.app[SETTINGS_KEY]
    checks: dict[str, str] = {}
    try:
        # its own deadline, shorter than the request's: a database that does not answer
        # is "unreachable" in time for the probe
        async with asyncio.timeout(settings.db_acquire_timeout_s):
            missing = await db.call(
                request.app[POOL_KEY],
                lambda conn: migrations.pending(conn, settings.migrations_dir),
                acquire_timeout_s=settings.db_acquire_timeout_s)
        checks["database"] = "ok" if not missing else f"pending migrations {missing}"
    except (Unavailable, TimeoutError):
        checks["database"] = "unreachable"
    metrics.DB_REACHABLE.set(0 if checks["database"] == "unreachable" else 1)
    ready = all(v == "ok" for v in checks.values())
    redis_check = await request.app[SERVICES_KEY].redis_status()  # degraded Redis: still ready
    if redis_check is not None:
        checks["redis"] = redis_check
    return json_response({"status": "ready" if ready else "not ready", "checks": checks},
                         status=200 if ready else 503)


@metrics_routes.get("/metrics", auth=False, responses={200: METRICS_TYPE})
async def prometheus_metrics(request: web.Request) -> web.Response:
    """Prometheus metrics of this process (OpenMetrics when the scraper asks for it)."""
    response: web.Response = await server_stats(request)
    return response


def setup(app: web.Application, settings: Settings) -> None:
    """Serve ``/metrics`` (here or on its own port) and report the pool in it.

    Its context runs inside the services' one: the pool exists when it starts, and it
    stops being reported (and the metrics port closes) before the pool closes.
    """
    if settings.metrics_port is None:
        metrics_routes.register(app)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        pool = app[POOL_KEY]
        metrics.DB_POOL.watch(pool)
        runner: web.AppRunner | None = None
        try:
            if settings.metrics_port is not None:
                runner = await _start_metrics_server(settings.host, settings.metrics_port)
            yield
        finally:
            if runner is not None:
                await runner.cleanup()
            metrics.DB_POOL.unwatch(pool)

    app.cleanup_ctx.append(ctx)


async def _start_metrics_server(host: str, port: int) -> web.AppRunner:
    side = web.Application()
    metrics_routes.register(side)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("metrics served on their own port", extra={"host": host, "port": port})
    return runner
