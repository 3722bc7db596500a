"""Revoked API keys lose their open streams.

A WebSocket or an event stream is authenticated once, at its start; afterwards nothing
would look at its key again. So every ``CHAT_API_KEY_CACHE_S`` (the time a revoked key
may still be accepted from the key cache) one query asks which of the keys that have
streams open in this process are still active, and the streams of the others end:
a WebSocket with close code 4401, an event stream with an ``error`` event of code
``unauthorized``. The check costs one indexed query per interval, and none while no
stream is open.

A database that does not answer skips a round (logged): the streams stay until it
answers again, as new requests of a cached key would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from chat_storage.server.state import POOL_KEY, SERVICES_KEY, SETTINGS_KEY
from chat_storage.server.streaming import CONNECTIONS_KEY
from chat_storage.storage import apikeys, db
from chat_storage.storage.errors import Unavailable

log = logging.getLogger(__name__)

CLOSE_CODE = 4401  # the WebSocket's "unauthorized" (4000-4999: the application's own)
REASON = "API key revoked"


async def check_once(app: web.Application) -> int:
    """Close the streams of keys revoked since; how many were closed."""
    connections = app[CONNECTIONS_KEY]
    key_ids = connections.key_ids()
    if not key_ids:
        return 0
    settings = app[SETTINGS_KEY]
    active = await db.call(app[POOL_KEY], lambda conn: apikeys.active_key_ids(conn, key_ids),
                           acquire_timeout_s=settings.db_acquire_timeout_s)
    revoked = set(key_ids) - active
    if not revoked:
        return 0
    closed = await connections.revoke(revoked)
    log.info("streams of revoked keys closed", extra={"keys": len(revoked), "streams": closed})
    return closed


async def _watch(app: web.Application, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await check_once(app)
        except Unavailable as exc:
            log.warning("cannot check for revoked keys; streams kept this round",
                        extra={"error": str(exc)})


async def _watcher(app: web.Application) -> AsyncIterator[None]:
    tasks = app[SERVICES_KEY].tasks
    task = tasks.spawn(_watch(app, app[SETTINGS_KEY].api_key_cache_s), name="key-revocation")
    yield
    await tasks.stop(task)


def setup(app: web.Application) -> None:
    """Watch the keys of open streams while the app runs (after the services start)."""
    app.cleanup_ctx.append(_watcher)
