"""Every request's deadline, so a database that does not answer cannot hold it.

With Postgres frozen (``SIGSTOP``, a partition), a pooled connection's statement waits
for ever: nothing in TCP or asyncpg gives up. So the API middleware runs each request
(authentication included) under a deadline: ``CHAT_WRITE_TIMEOUT_S`` for a method that
writes, ``CHAT_REQUEST_TIMEOUT_S`` for the others. Past it the request is cancelled and
answered 503 with ``Retry-After`` (:func:`chat_storage.server.middlewares.to_api_error`);
a statement cut off that way has its connection terminated
(:func:`chat_storage.storage.db.call`) rather than waited for. A write cut off while
queued is dropped; one whose commit is under way is committed or not — the 503 says
its outcome is unknown and to retry with the same ``Idempotency-Key``.

The deadline covers a request until its response starts: once a WebSocket is upgraded,
an event stream or an export has begun (``on_response_prepare``), it is lifted. The
local object store's signed URLs (``/objects/``) have none: an upload of up to
``CHAT_MAX_ATTACHMENT_BYTES`` takes what the client's link takes, and touches no database.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from chat_storage.server.state import SETTINGS_KEY
from chat_storage.storage.objects.local import PREFIX

DEADLINE_KEY = web.RequestKey("deadline", asyncio.Timeout)
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNBOUNDED_PREFIX = PREFIX  # the local store's URLs (server.objects): files, no database


def of(request: web.Request) -> asyncio.Timeout:
    """The deadline of ``request``, to enter around its work (kept on the request)."""
    settings = request.app[SETTINGS_KEY]
    seconds: float | None = (settings.write_timeout_s if request.method in WRITES
                             else settings.request_timeout_s)
    if request.path.startswith(UNBOUNDED_PREFIX):
        seconds = None
    deadline = asyncio.timeout(seconds)
    request[DEADLINE_KEY] = deadline
    return deadline


def lift(request: web.Request) -> None:
    """No deadline any more: the response has started (a stream or an upgrade)."""
    deadline = request.get(DEADLINE_KEY)
    if deadline is None or deadline.when() is None:
        return
    # over already (RuntimeError): the handler returned and aiohttp sends its response
    with contextlib.suppress(RuntimeError):
        deadline.reschedule(None)
