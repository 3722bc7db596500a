"""The keys that sign a tenant's user tokens: made on first use, sealed at rest, rotated.

A key's id is the token's ``kid`` (``csk_`` and 16 hex digits, public). The key itself
is 32 random bytes sealed under the server secret (:mod:`chat_storage.storage.sealing`)
with its id and tenant as context. One key per tenant is active; rotating retires it,
and a retired key verifies nothing.
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid

import asyncpg

from chat_storage.storage.apikeys import limits_of
from chat_storage.storage.audit_log import audit
from chat_storage.storage.overrides import Limits
from chat_storage.storage.sealing import Sealer
from chat_storage.storage.tenants import tenant_id_by_name

KID_PREFIX = "csk_"


@dataclasses.dataclass(frozen=True, slots=True)
class SigningKey:
    """An active signing key, opened, with what a token it signed stands for."""

    kid: str
    tenant_id: uuid.UUID
    tenant_name: str
    secret: bytes
    limits: Limits


def _context(kid: str, tenant_id: uuid.UUID) -> bytes:
    return f"{kid}/{tenant_id}".encode()


def is_own_kid(kid: object) -> bool:
    """Whether ``kid`` names one of this service's signing keys (else: an OIDC issuer's)."""
    return isinstance(kid, str) and kid.startswith(KID_PREFIX) and len(kid) == 20


# the active key of a tenant with the limits a user of that tenant gets (no API key:
# the tenant's, field by field, else the settings)
_KEY_OF = """
    SELECT s.id, s.tenant_id, s.sealed_key, t.name AS tenant_name,
           t.rate_limit_per_s, t.rate_limit_burst, t.max_stream_connections
    FROM signing_keys s JOIN tenants t ON t.id = s.tenant_id
"""


def _opened(row: asyncpg.Record, sealer: Sealer) -> SigningKey:
    secret = sealer.open(bytes(row["sealed_key"]), _context(row["id"], row["tenant_id"]))
    return SigningKey(row["id"], row["tenant_id"], row["tenant_name"], secret, limits_of(row))


async def active_key(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                     sealer: Sealer) -> SigningKey:
    """The tenant's active key, made now if it has none (two replicas racing make one)."""
    row = await conn.fetchrow(_KEY_OF + " WHERE s.tenant_id = $1 AND s.retired_at IS NULL",
                              tenant_id)
    if row is None:
        kid = KID_PREFIX + secrets.token_hex(8)
        sealed = sealer.seal(secrets.token_bytes(32), _context(kid, tenant_id))
        # the partial unique index keeps one active key: the loser of a race inserts
        # nothing and reads the winner's
        await conn.execute(
            "INSERT INTO signing_keys (id, tenant_id, sealed_key) VALUES ($1, $2, $3) "
            "ON CONFLICT (tenant_id) WHERE retired_at IS NULL DO NOTHING",
            kid, tenant_id, sealed)
        row = await conn.fetchrow(
            _KEY_OF + " WHERE s.tenant_id = $1 AND s.retired_at IS NULL", tenant_id)
    assert row is not None  # noqa: S101 - narrows the type: an active key exists now
    return _opened(row, sealer)


async def key_by_id(conn: asyncpg.Connection, kid: str, sealer: Sealer) -> SigningKey | None:
    """Active key ``kid``, opened; ``None`` if unknown or retired."""
    row = await conn.fetchrow(_KEY_OF + " WHERE s.id = $1 AND s.retired_at IS NULL", kid)
    return None if row is None else _opened(row, sealer)


async def active_ids(conn: asyncpg.Connection, kids: list[str]) -> set[str]:
    """Those of ``kids`` that are still active (not retired, not deleted)."""
    rows = await conn.fetch(
        "SELECT id FROM signing_keys WHERE id = ANY($1::text[]) AND retired_at IS NULL", kids)
    return {row["id"] for row in rows}


async def rotate(conn: asyncpg.Connection, tenant: str) -> str | None:
    """Retire tenant ``tenant``'s active key; the next token minted makes a new one.

    Returns the retired key's id (``None``: it had none). Tokens the old key signed stop
    working (each replica within its key cache's lifetime). Audited.
    """
    tenant_id = await tenant_id_by_name(conn, tenant)
    async with conn.transaction():
        kid: str | None = await conn.fetchval(
            "UPDATE signing_keys SET retired_at = now() "
            "WHERE tenant_id = $1 AND retired_at IS NULL RETURNING id", tenant_id)
        await audit(conn, tenant_id, "cli", "signing_key.rotate", tenant, {"retired": kid})
    return kid
