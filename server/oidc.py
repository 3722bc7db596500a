"""OIDC tokens as user tokens: a JWT of an issuer a tenant trusts acts for one user of
that tenant. docs/oidc.md tells the operator's side; docs/api.md, 1.1, "Credentials".

Installed at :data:`~chat_storage.server.tokens.OIDC_KEY`; :class:`Tokens
<chat_storage.server.tokens.Tokens>` hands it every bearer token whose ``kid`` is not one
of this service's. In order:

1. the header's ``alg`` must be asymmetric (RS*, PS*, ES*, EdDSA): never ``none``,
   never HS* (an issuer's key is public: an HMAC under it proves nothing);
2. the unverified ``iss`` must be exactly a tenant's trusted issuer; when several
   tenants trust it, the unverified ``aud`` picks the one whose audience it names;
3. the key named by ``kid`` comes from the issuer's JWKS (:mod:`.oidc_keys`), and must
   be one for that ``alg``;
4. PyJWT verifies the signature, ``iss``, ``aud`` (the tenant's audience), ``exp``
   (required), ``iat`` and ``nbf`` when present, with ``CHAT_TOKEN_LEEWAY_S`` of skew;
5. the tenant's user claim (``sub`` by default) names the user.

Such a token carries the scopes ``read write stream``: the issuer vouches for who the
user is, not for what this service lets them do, and a user may do all three to their
own sessions. Which tenants trust an issuer is cached for ``api_key_cache_s``, like API
keys: ``tenants update --no-oidc`` takes effect on every replica within that time.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import jwt

from chat_storage.runtime.settings import Settings
from chat_storage.server.errors import ApiError
from chat_storage.server.oidc_keys import (
    ALGORITHMS,
    IssuerUnreachable,
    JwksCache,
    KeyRefused,
    UnknownKey,
)
from chat_storage.server.tokens import InvalidToken, decode, user_of
from chat_storage.server.ttlcache import TtlCache
from chat_storage.storage import db
from chat_storage.storage.principal import TOKEN_SCOPES, Principal, user_principal
from chat_storage.storage.trusted_issuers import TrustingTenant, tenants_trusting

FOREIGN = "not issued by this service or a trusted issuer"
MAX_ISSUER_CHARS = 2048
# what an issuer's token must carry; iat and nbf are checked when present
_REQUIRED = ["exp", "iss", "aud"]
_ALL_SCOPES = frozenset(TOKEN_SCOPES)


class OidcVerifier:
    """Verifies the JWTs of the issuers tenants trust; its :meth:`verify` is the app's
    ``OIDC_KEY``."""

    def __init__(self, pool: asyncpg.Pool, keys: JwksCache, *, cache_ttl_s: float,
                 leeway_s: float, acquire_timeout_s: float) -> None:
        self.pool = pool
        self.keys = keys
        self.leeway_s = leeway_s
        self.acquire_timeout_s = acquire_timeout_s
        self._trusting: TtlCache[str, list[TrustingTenant]] = TtlCache(cache_ttl_s)

    @classmethod
    def open(cls, pool: asyncpg.Pool, settings: Settings) -> OidcVerifier:
        """A verifier with its own HTTP client (close it with :meth:`close`)."""
        session = aiohttp.ClientSession(headers={"User-Agent": "chat-storage"})
        return cls(pool, JwksCache(session, ttl_s=settings.oidc_jwks_cache_s),
                   cache_ttl_s=settings.api_key_cache_s, leeway_s=settings.token_leeway_s,
                   acquire_timeout_s=settings.db_acquire_timeout_s)

    async def close(self) -> None:
        """Close the HTTP client (after the last request that may use it)."""
        await self.keys.session.close()

    async def verify(self, token: str, header: dict[str, Any]) -> tuple[Principal, float]:
        """The user ``token`` stands for and its ``exp``; :class:`InvalidToken` (401)
        saying why not, 503 when its issuer's keys cannot be had."""
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise InvalidToken("signing algorithm not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed")
        unverified = _unverified_claims(token)
        issuer = unverified.get("iss")
        if (not isinstance(issuer, str) or not 0 < len(issuer) <= MAX_ISSUER_CHARS
                or not issuer.isprintable()):  # no NUL for Postgres, no control characters
            raise InvalidToken(FOREIGN)
        tenant = _pick(await self._tenants(issuer), unverified.get("aud"))
        try:
            key = await self.keys.key(issuer, kid, algorithm)
        except IssuerUnreachable as exc:
            raise ApiError(503, "the token's issuer cannot be reached for its signing keys; "
                                "try again later",
                           headers={"Retry-After": str(exc.retry_after_s)}) from None
        except UnknownKey:
            raise InvalidToken("signed with a key its issuer does not publish") from None
        except KeyRefused:
            raise InvalidToken("signing algorithm not accepted for its key") from None
        claims = decode(token, key, [algorithm], tenant.audience, issuer, self.leeway_s,
                        _REQUIRED)
        try:
            user_id = user_of(claims.get(tenant.user_claim))
        except InvalidToken:
            raise InvalidToken(f"its {tenant.user_claim!r} claim is not a user id (text of "
                               "1 to 128 printable characters)") from None
        expires = float(claims["exp"])  # required, and a number: PyJWT checked it
        principal = user_principal(tenant.tenant_id, tenant.tenant_name, user_id, _ALL_SCOPES,
                                   limits=tenant.limits, credential="oidc",
                                   expires_at=expires, oidc_key=(issuer, kid))
        return principal, expires

    async def _tenants(self, issuer: str) -> list[TrustingTenant]:
        tenants = self._trusting.get(issuer)
        if tenants is None:
            tenants = await db.call(self.pool, lambda conn: tenants_trusting(conn, issuer),
                                    acquire_timeout_s=self.acquire_timeout_s)
            self._trusting.put(issuer, tenants)  # none is kept too: unknown issuers are cheap
        return tenants


def _unverified_claims(token: str) -> dict[str, Any]:
    """The claims, not yet verified: only to pick the tenant and its issuer's keys."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise InvalidToken("malformed") from None
    if not isinstance(claims, dict):
        raise InvalidToken("malformed")
    return claims


def _pick(tenants: list[TrustingTenant], audience: object) -> TrustingTenant:
    """The tenant a token is for: the only one trusting its issuer, else the one whose
    audience its ``aud`` names."""
    if not tenants:
        raise InvalidToken(FOREIGN)
    if len(tenants) == 1:
        return tenants[0]  # its audience is verified with the signature
    named = {audience} if isinstance(audience, str) else (
        {a for a in audience if isinstance(a, str)} if isinstance(audience, list) else set())
    matching = [t for t in tenants if t.audience in named]
    if not matching:
        raise InvalidToken("meant for another audience")
    if len(matching) > 1:
        raise InvalidToken("its audience names several tenants trusting its issuer")
    return matching[0]

