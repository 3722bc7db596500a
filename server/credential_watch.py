"""Streams opened with a bearer token end when the token no longer would verify.

A WebSocket or an event stream is authenticated once, at its start. :mod:`.revocation`
ends those of revoked API keys; this module, those of user and OIDC tokens, with the
same signal (a WebSocket closes with 4401, an event stream ends with an ``error``
event of code ``unauthorized``), the reason saying which:

- **expired**: the token's ``exp`` plus ``CHAT_TOKEN_LEEWAY_S`` (when a request with
  it starts failing) has passed. There is no refresh frame: a client renews its token
  and opens a new stream (with a new ticket).
- **signing key retired**: ``tenants rotate-signing-key`` retired (or something
  deleted) the key of the user token, or of the token a ticket was asked with;
- **issuer key withdrawn**: the OIDC token's issuer no longer publishes its ``kid``
  (its key set is fetched again once older than ``CHAT_OIDC_JWKS_CACHE_S``).

One sweep every ``CHAT_API_KEY_CACHE_S`` in each process, over the registry of open
streams (:class:`~chat_storage.server.streaming.Connections`), no timer per stream:
expiries are a heap popped up to now; one indexed query asks which of the signing keys
with streams open are still active; the issuers' key sets come from the JWKS cache.
A stream therefore ends at most ``CHAT_API_KEY_CACHE_S`` (plus the query) after the
moment above — for an issuer's key, after its set is next fetched. A database or
issuer that does not answer skips that check for the round (logged): the streams stay,
as tokens already verified would be accepted from the caches.

A ticket's stream carries its user token's signing key but not the token's ``exp``
(tickets do not store it): it ends on rotation, not on the token's expiry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from chat_storage.server.oidc_keys import JWKS_KEY
from chat_storage.server.state import POOL_KEY, SERVICES_KEY, SETTINGS_KEY
from chat_storage.server.streaming import CONNECTIONS_KEY
from chat_storage.storage import db, signing_keys
from chat_storage.storage.errors import Unavailable

log = logging.getLogger(__name__)

EXPIRED = "token expired"
RETIRED = "token's signing key retired"
WITHDRAWN = "token's signing key no longer published by its issuer"


async def check_once(app: web.Application, now: float | None = None) -> int:
    """End the streams whose token expired or whose key went; how many."""
    connections = app[CONNECTIONS_KEY]
    settings = app[SETTINGS_KEY]
    at = time.time() if now is None else now
    closed = await connections.expire(at - settings.token_leeway_s, EXPIRED)
    kids = connections.signer_ids()
    if kids:
        try:
            active = await db.call(
                app[POOL_KEY], lambda conn: signing_keys.active_ids(conn, kids),
                acquire_timeout_s=settings.db_acquire_timeout_s)
        except Unavailable as exc:
            log.warning("cannot check for retired signing keys; streams kept this round",
                        extra={"error": str(exc)})
        else:
            closed += await connections.revoke_signers(set(kids) - active, RETIRED)
    jwks = app.get(JWKS_KEY)
    if jwks is not None:
        withdrawn = set()
        for issuer, kid in connections.oidc_keys():
            if await jwks.publishes(issuer, kid) is False:  # None: unknown, kept
                withdrawn.add((issuer, kid))
        closed += await connections.revoke_oidc(withdrawn, WITHDRAWN)
    if closed:
        log.info("streams of expired or re-keyed tokens closed", extra={"streams": closed})
    return closed


async def _watch(app: web.Application, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await check_once(app)
        except Exception:  # a bug here must not stop the watch of every later round
            log.exception("token watch round failed")


async def _watcher(app: web.Application) -> AsyncIterator[None]:
    tasks = app[SERVICES_KEY].tasks
    task = tasks.spawn(_watch(app, app[SETTINGS_KEY].api_key_cache_s), name="token-watch")
    yield
    await tasks.stop(task)


def setup(app: web.Application) -> None:
    """Watch the tokens of open streams while the app runs (after the services start)."""
    app.cleanup_ctx.append(_watcher)
