"""``POST /dev/tokens``: a user token of tenant ``dev`` without a tenant key, for the
demo page on a developer's machine (docs/auth.md, "Trying it out").

Served only with the embedded zero-setup database or ``CHAT_DEV_TOKENS=1``, outside
``/api/v1`` and its OpenAPI document, and only to a caller on this machine:

- the peer address is loopback: no other machine can mint;
- the ``Host`` is a loopback name or address: a web page whose own name was made to
  resolve to 127.0.0.1 (DNS rebinding) still sends its name, and is refused;
- an ``Origin``, when sent, is this server's own: another page on this machine may not
  mint (and without CORS headers it could not read the token anyway).

Behind a reverse proxy on the same machine every caller looks local: never turn
``CHAT_DEV_TOKENS`` on there.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Annotated

from aiohttp import web
from pydantic import Field

from chat_storage.runtime.settings import DEV_TENANT, Settings
from chat_storage.server.errors import ApiError
from chat_storage.server.jsonio import json_response, parse_body
from chat_storage.server.schemas import Strict, Text
from chat_storage.server.state import POOL_KEY, SETTINGS_KEY
from chat_storage.server.tokens import DEFAULT_TTL_S, MAX_TTL_S, TOKENS_KEY
from chat_storage.storage import db, tenants
from chat_storage.storage.principal import TOKEN_SCOPES

PATH = "/dev/tokens"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


class DevTokenCreate(Strict):
    """A token of every scope for ``user_id`` of tenant ``dev``, for ``ttl_s`` seconds."""

    user_id: Annotated[Text, Field(min_length=1, max_length=128)]
    ttl_s: Annotated[int, Field(ge=60, le=MAX_TTL_S)] = DEFAULT_TTL_S


class DevTenant:
    """The id of tenant ``dev``, once known (made on first use if missing)."""

    def __init__(self) -> None:
        self.id: uuid.UUID | None = None


DEV_TENANT_KEY = web.AppKey("dev_tenant", DevTenant)


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` (an IP, or a host name of ``Host``) is this machine."""
    if address is None:
        return False
    host = address.strip().lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_caller(request: web.Request) -> None:
    """403 unless the caller is on this machine and, if a page, this server's own."""
    host = request.url.host  # the Host header's name, without its port
    if not is_loopback(request.remote) or not is_loopback(host):
        raise ApiError(403, "dev tokens are minted only for callers on this machine")
    origin = request.headers.get("Origin")
    own = f"{request.scheme}://{request.host}".lower()
    if origin is not None and origin.strip().rstrip("/").lower() != own:
        raise ApiError(403, "dev tokens are minted only for this server's own pages")


async def create_dev_token(request: web.Request) -> web.Response:
    """Mint a user token of tenant ``dev`` (the answer of ``POST /api/v1/tokens``)."""
    check_caller(request)
    body = await parse_body(request, DevTokenCreate)
    holder = request.app[DEV_TENANT_KEY]
    if holder.id is None:
        settings = request.app[SETTINGS_KEY]
        holder.id = await db.call(
            request.app[POOL_KEY], lambda conn: tenants.ensure_tenant(
                conn, DEV_TENANT, settings.new_tenant_retention),
            acquire_timeout_s=settings.db_acquire_timeout_s)
    scopes = list(TOKEN_SCOPES)
    token, expires_at = await request.app[TOKENS_KEY].mint(
        holder.id, body.user_id, scopes, None, body.ttl_s)
    return json_response({"token": token, "user_id": body.user_id, "scopes": scopes,
                          "session_ids": None, "expires_at": expires_at}, status=201,
                         headers={"Cache-Control": "no-store"})


def setup(app: web.Application, settings: Settings) -> None:
    """Serve ``POST /dev/tokens`` when the settings ask for it (else it is a 404)."""
    if settings.serves_dev_tokens:
        app[DEV_TENANT_KEY] = DevTenant()
        app.router.add_post(PATH, create_dev_token)
