"""The tenants that trust an OpenID Connect issuer: whose JWTs act as their users' tokens
(``tenants update --oidc-issuer``; docs/oidc.md)."""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg

from chat_storage.storage.apikeys import limits_of
from chat_storage.storage.overrides import Limits


@dataclasses.dataclass(frozen=True, slots=True)
class TrustingTenant:
    """A tenant that trusts an issuer: the ``aud`` its tokens must carry, the claim that
    names the user, and the limits its users get (the tenant's, else the settings)."""

    tenant_id: uuid.UUID
    tenant_name: str
    audience: str
    user_claim: str
    limits: Limits


async def tenants_trusting(conn: asyncpg.Connection, issuer: str) -> list[TrustingTenant]:
    """Every tenant whose trusted issuer is exactly ``issuer`` (compared as text, as the
    ``iss`` claim is: no normalisation, a trailing ``/`` counts), by name."""
    rows = await conn.fetch(
        """
        SELECT id, name, oidc_audience, oidc_user_claim,
               rate_limit_per_s, rate_limit_burst, max_stream_connections
        FROM tenants
        WHERE oidc_issuer = $1 AND oidc_audience IS NOT NULL
        ORDER BY name
        """, issuer)
    return [TrustingTenant(r["id"], r["name"], r["oidc_audience"], r["oidc_user_claim"],
                           limits_of(r)) for r in rows]
