"""``Idempotency-Key`` for POST: replay, 422 for another body, 409 while in flight.

Handlers call :func:`begin` with the parsed body; the returned claim goes down to the
storage call, which records the response in the same transaction as the work.
If the work fails, :func:`release` frees the key so a retry runs at once.

A replay is byte-identical to the first answer: the body is the stored text as is, and
``Location`` is rebuilt from it by the function the route also answered with.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from chat_storage.server.auth import principal_of
from chat_storage.server.errors import ApiError
from chat_storage.server.jsonio import encoded_json_response
from chat_storage.server.limits import header_text
from chat_storage.server.state import POOL_KEY, SERVICES_KEY, SETTINGS_KEY, keyring_of
from chat_storage.storage import db
from chat_storage.storage import idempotency as idempotency_rows
from chat_storage.storage.idempotency import Claim, ClaimStatus
from chat_storage.storage.ids import parse_uuid

log = logging.getLogger(__name__)
HEADER = "Idempotency-Key"
RELEASE_RETRY_S = 0.5


def request_hash(request: web.Request, body: Any) -> bytes:
    """Fingerprint of what is asked: method, path and the body (key order ignored)."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(f"{request.method} {request.path}\n".encode() + canonical).digest()


def key_of(request: web.Request) -> str | None:
    """The request's ``Idempotency-Key`` (``None`` if not sent): UTF-8 text of 1 to 255
    characters, else 400. The API middleware checks it before the handler, so a bad key
    is refused before any other check of the request (a body over a limit: 413)."""
    key = header_text(request.headers.get(HEADER), HEADER)
    if key is not None and not 1 <= len(key) <= 255:
        raise ApiError(400, "Idempotency-Key must be 1 to 255 characters",
                       errors=[{"field": HEADER, "message": "must be 1 to 255 characters"}])
    return key


async def begin(
    request: web.Request, body: Any, *, location: Callable[[Any], str] | None = None,
) -> web.Response | Claim | None:
    """Claim the request's key. ``None``: no key sent; a Response: answer with it now.

    ``location``: the ``Location`` of an answer, from its body (the route's own).
    """
    key = key_of(request)
    if key is None:
        return None
    settings = request.app[SETTINGS_KEY]
    principal = principal_of(request)
    tenant_id = principal.tenant_id
    if principal.user_id is not None:
        # a user's keys are its own: two users (of one tenant) picking the same key do
        # not meet, and neither learns of the other's (a header cannot hold \x1f)
        key = f"{principal.user_id}\x1f{key}"
    digest = request_hash(request, body)
    # the session the reply is about: its deletion then reaches the reply too
    session_id = parse_uuid(request.match_info.get("session_id", ""))
    services = request.app.get(SERVICES_KEY)
    holder = None if services is None else services.liveness.holder
    result = await db.call(
        request.app[POOL_KEY],
        lambda conn: idempotency_rows.claim(conn, tenant_id, key, digest,
                                            ttl_s=settings.idempotency_ttl_s,
                                            session_id=session_id, holder=holder,
                                            keyring=keyring_of(request)),
        acquire_timeout_s=settings.db_acquire_timeout_s,
    )
    if result.outcome is ClaimStatus.CLAIMED:
        return result.claim
    if result.outcome is ClaimStatus.MISMATCH:
        raise ApiError(422, "Idempotency-Key was already used with a different request",
                       code="idempotency_mismatch")
    if result.outcome is ClaimStatus.IN_FLIGHT:
        raise ApiError(409, "a request with this Idempotency-Key is still in progress",
                       code="idempotency_in_flight", headers={"Retry-After": "1"})
    if result.status_code is None or result.response is None:
        raise RuntimeError("an idempotent replay without its stored answer")
    headers = {"Idempotent-Replayed": "true"}
    if location is not None:
        headers["Location"] = location(orjson.loads(result.response))
    return encoded_json_response(result.response, status=result.status_code, headers=headers)


async def release(request: web.Request, claim: Claim | None) -> None:
    """Free ``claim`` after its work failed; errors here are logged, never raised.

    A request cut off by its deadline (being cancelled) answers at once and frees the
    key in the background: the database it would wait for may be the one not answering.
    """
    if claim is None:
        return
    task = asyncio.current_task()
    services = request.app.get(SERVICES_KEY)
    if task is not None and task.cancelling() and services is not None:
        services.tasks.spawn(_release(request.app, claim, patience_s=idempotency_rows.LOCK_S),
                             name="idempotency-release")
        return
    await _release(request.app, claim)


async def _release(app: web.Application, claim: Claim, *, patience_s: float = 0.0) -> None:
    """Delete the claim; retried for ``patience_s`` (then it expires by itself)."""
    settings = app[SETTINGS_KEY]
    loop = asyncio.get_running_loop()
    give_up = loop.time() + patience_s
    while True:
        try:
            async with asyncio.timeout(settings.write_timeout_s):
                await db.call(app[POOL_KEY],
                              lambda conn: idempotency_rows.release(conn, claim),
                              acquire_timeout_s=settings.db_acquire_timeout_s)
            return
        except Exception:
            if loop.time() >= give_up:
                # the claim's lock expires by itself (storage.idempotency.LOCK_S)
                log.warning("could not release idempotency key", exc_info=True)
                return
        await asyncio.sleep(RELEASE_RETRY_S)
