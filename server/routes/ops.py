"""Operations: liveness, readiness. No API key needed."""

from __future__ import annotations

from aiohttp import web

from server.database import POOL_KEY
from server.jsonio import json_response
from server.routing import RouteTable
from server.settings import SETTINGS_KEY
from storage import migrations
from storage.db import CONNECTION_ERRORS

routes = RouteTable("operations")


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
        async with request.app[POOL_KEY].acquire(timeout=settings.db_acquire_timeout_s) as conn:
            missing = await migrations.pending(conn, settings.migrations_dir)
        checks["database"] = "ok" if not missing else f"pending migrations {missing}"
    except (*CONNECTION_ERRORS, TimeoutError):
        checks["database"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return json_response({"status": "ready" if ready else "not ready", "checks": checks},
                         status=200 if ready else 503)
