"""Failed authentications in the audit log, rate-limited.

One record per client address and reason per ``window_s`` (the first of the window;
the next says how many were left out), and at most ``max_per_window`` records per
window in all, per server process: a flood of bad keys costs a handful of inserts, not
one each. A record names the tenant when the key presented is one of its keys (revoked,
or with a wrong secret); otherwise it has no tenant (``chat-storage audit
--unattributed``). It never holds the key, the token or any part of a secret but a
known key's id.
"""

from __future__ import annotations

import logging
import time

import asyncpg
from aiohttp import web

from chat_storage.server.errors import ApiError
from chat_storage.server.logs import REQUEST_ID
from chat_storage.server.state import POOL_KEY, SETTINGS_KEY
from chat_storage.storage import db
from chat_storage.storage.apikeys import key_id_of, tenant_of_key
from chat_storage.storage.audit_log import audit

log = logging.getLogger(__name__)


class FailedAuthAudit:
    """Decides which failed authentications to record, and records them."""

    def __init__(self, *, window_s: float = 60.0, max_per_window: int = 100,
                 max_addresses: int = 10_000) -> None:
        self.window_s = window_s
        self.max_per_window = max_per_window
        self.max_addresses = max_addresses
        self._window_start = 0.0
        self._recorded = 0
        self._seen: dict[tuple[str, str], int] = {}  # this window: failures per source

    def admit(self, address: str, reason: str, now: float) -> int | None:
        """``None``: do not record this one; else how many of its source this window had
        left out before it (0 for the first)."""
        if now - self._window_start >= self.window_s:
            self._window_start, self._recorded = now, 0
            self._seen.clear()
        source = (address, reason)
        count = self._seen.get(source)
        if count is not None:
            self._seen[source] = count + 1
            return None
        if self._recorded >= self.max_per_window or len(self._seen) >= self.max_addresses:
            return None
        self._seen[source] = 1
        self._recorded += 1
        return 0

    async def failed(self, request: web.Request, error: ApiError) -> None:
        """Record ``error`` (a 401 or 403 of authentication) if admitted; never raises."""
        reason = _reason(request, error)
        address = request.remote or "unknown"
        if self.admit(address, reason, time.monotonic()) is None:
            return
        key_id = key_id_of(request.headers.get("X-Api-Key", "")) if reason == "invalid_key" \
            else None
        rid = REQUEST_ID.get()  # set by the request-id middleware for this request
        details = {"reason": reason, "address": address, "path": request.path,
                   "window_s": self.window_s}

        async def write(conn: asyncpg.Connection) -> None:
            tenant_id = None if key_id is None else await tenant_of_key(conn, key_id)
            await audit(conn, tenant_id, "anonymous", "auth.failed",
                        f"key:{key_id}" if tenant_id is not None else None, details, rid)

        try:
            await db.call(request.app[POOL_KEY], write,
                          acquire_timeout_s=request.app[SETTINGS_KEY].db_acquire_timeout_s)
        except Exception as exc:  # the caller gets its 401/403 all the same
            log.warning("failed authentication not audited", extra={"error": repr(exc)})


def _reason(request: web.Request, error: ApiError) -> str:
    if "X-Api-Key" in request.headers:
        return "invalid_key"
    if "Authorization" in request.headers:
        return "invalid_token"
    return "missing_credentials" if error.status == 401 else "invalid_ticket"


FAILED_AUTH_KEY = web.AppKey("failed_auth_audit", FailedAuthAudit)
