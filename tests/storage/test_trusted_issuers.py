"""Which tenants trust an issuer (storage/trusted_issuers.py), on real Postgres."""

from __future__ import annotations

import secrets

import asyncpg

from chat_storage.storage import tenants
from chat_storage.storage.overrides import Limits
from chat_storage.storage.trusted_issuers import tenants_trusting


async def test_tenants_trusting_an_issuer_exactly(pool: asyncpg.Pool) -> None:
    issuer = f"https://idp-{secrets.token_hex(4)}.example/realms/x"
    names = [f"trust-{i}-{secrets.token_hex(4)}" for i in range(3)]
    async with pool.acquire() as conn:
        for name in names:
            await tenants.create_tenant(conn, name)
        await tenants.update_tenant(conn, names[0], oidc_issuer=issuer, oidc_audience="a",
                                    rate_limit_per_s=5.0, max_stream_connections=7)
        await tenants.update_tenant(conn, names[1], oidc_issuer=issuer, oidc_audience="b",
                                    oidc_user_claim="email")
        await tenants.update_tenant(conn, names[2], oidc_issuer=issuer + "/",
                                    oidc_audience="a")
        found = await tenants_trusting(conn, issuer)
        assert [(t.tenant_name, t.audience, t.user_claim) for t in found] == [
            (names[0], "a", "sub"), (names[1], "b", "email")]
        assert found[0].limits == Limits(5.0, None, 7)
        assert found[0].tenant_id == await tenants.tenant_id_by_name(conn, names[0])
        assert [t.tenant_name for t in await tenants_trusting(conn, issuer + "/")] == [names[2]]
        assert await tenants_trusting(conn, issuer.upper()) == []
        await tenants.update_tenant(conn, names[0], oidc_issuer=None, oidc_audience=None)
        assert [t.tenant_name for t in await tenants_trusting(conn, issuer)] == [names[1]]
