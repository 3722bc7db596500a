"""User tokens: minted for one user of a tenant, verified on every request that carries
``Authorization: Bearer``. docs/auth.md tells their story; docs/api.md their contract.

A user token is a JWT (PyJWT), HS256 under its tenant's signing key
(:mod:`chat_storage.storage.signing_keys`), whose id is the ``kid`` header:

- ``iss`` and ``aud`` ``chat-storage``; ``tid`` the tenant; ``sub`` the user;
- ``scope`` some of ``read write stream``, space-separated; ``sessions`` the session
  ids it is limited to, when it is; ``iat``, ``exp``, ``jti``.

A bearer token whose ``kid`` is not one of ours goes to the tenant's trusted OIDC
issuer (:data:`OIDC_KEY`, set when that module is installed). Opened signing keys are
cached for ``api_key_cache_s`` like API keys: a rotated key stops verifying on every
replica within that time. Minting reads the active key each time.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
import jwt
from aiohttp import web

from chat_storage.server.errors import ApiError
from chat_storage.server.ttlcache import TtlCache
from chat_storage.storage import db, signing_keys
from chat_storage.storage.principal import TOKEN_SCOPES, Principal, TokenScope, user_principal
from chat_storage.storage.sealing import Sealer, SealError
from chat_storage.storage.signing_keys import SigningKey

ISSUER = AUDIENCE = "chat-storage"
ALGORITHM = "HS256"
MAX_SESSION_IDS = 100
DEFAULT_TTL_S = 900  # a token's lifetime unless asked otherwise
MAX_TTL_S = 86_400
_REQUIRED = ["exp", "iat", "sub", "tid", "scope", "iss", "aud"]

# the OIDC verifier, if installed: (token, unverified header) -> the principal and the
# token's exp, or InvalidToken
OidcVerifier = Callable[[str, dict[str, Any]], Awaitable[tuple[Principal, float]]]
OIDC_KEY: web.AppKey[OidcVerifier] = web.AppKey("oidc_verifier")


class InvalidToken(ApiError):
    """401 for a bearer token that does not verify; the message says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(401, f"token is not valid: {reason}", headers={
            "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'})


class TokensUnavailable(ApiError):
    """503: this server has no secret to seal signing keys with."""

    def __init__(self) -> None:
        super().__init__(503, "user tokens are not configured on this server "
                              "(CHAT_SECRET_KEY is not set)")


class Tokens:
    """Mints and verifies the user tokens of every tenant."""

    def __init__(self, pool: asyncpg.Pool, sealer: Sealer | None, *, cache_ttl_s: float,
                 leeway_s: float, acquire_timeout_s: float) -> None:
        self.pool = pool
        self.sealer = sealer
        self.leeway_s = leeway_s
        self.acquire_timeout_s = acquire_timeout_s
        self._by_kid: TtlCache[str, SigningKey | None] = TtlCache(cache_ttl_s)
        # tokens verified lately, with their expiry: a page sends one token with every
        # request, and verifying costs more than the rest of a cheap request
        # (loadtest/bench_tokens.py); kept no longer than a signing key's cache entry
        self._verified: TtlCache[str, tuple[float, Principal]] = TtlCache(cache_ttl_s)

    async def mint(self, tenant_id: uuid.UUID, user_id: str, scopes: Iterable[TokenScope],
                   session_ids: list[uuid.UUID] | None, ttl_s: int) -> tuple[str, dt.datetime]:
        """A token for ``user_id`` of the tenant, and when it expires."""
        key = await self._active_key(tenant_id)
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER, "aud": AUDIENCE, "tid": str(tenant_id), "sub": user_id,
            "scope": " ".join(s for s in TOKEN_SCOPES if s in set(scopes)),
            "iat": now, "exp": now + ttl_s, "jti": secrets.token_urlsafe(12),
        }
        if session_ids is not None:
            claims["sessions"] = [str(s) for s in session_ids]
        token = jwt.encode(claims, key.secret, algorithm=ALGORITHM, headers={"kid": key.kid})
        return token, dt.datetime.fromtimestamp(now + ttl_s, dt.UTC)

    async def verify(self, token: str, oidc: OidcVerifier | None) -> Principal:
        """The user ``token`` stands for; :class:`InvalidToken` (401) saying why not."""
        hit = self._verified.get(token)
        if hit is not None and hit[0] + self.leeway_s > time.time():
            return hit[1]
        principal, expires = await self._verify(token, oidc)
        self._verified.put(token, (expires, principal))
        return principal

    async def _verify(self, token: str, oidc: OidcVerifier | None
                      ) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:  # not only DecodeError: a non-string kid, a bad crit
            raise InvalidToken("malformed") from None
        kid = header.get("kid")
        if not signing_keys.is_own_kid(kid):
            if oidc is None:
                raise InvalidToken("not issued by this service or a trusted issuer")
            return await oidc(token, header)
        key = await self._key(str(kid))
        if key is None:
            raise InvalidToken("its signing key was rotated or is unknown")
        claims = decode(token, key.secret, [ALGORITHM], AUDIENCE, ISSUER, self.leeway_s,
                        _REQUIRED)
        if claims["tid"] != str(key.tenant_id):
            raise InvalidToken("signature does not match (the token was altered)")
        expires = float(claims["exp"])
        return user_principal(
            key.tenant_id, key.tenant_name, user_of(claims["sub"]), scopes_of(claims["scope"]),
            session_ids=_sessions_of(claims.get("sessions")), limits=key.limits,
            credential="token", credential_id=f"token:{key.kid}", expires_at=expires), expires

    async def _active_key(self, tenant_id: uuid.UUID) -> SigningKey:
        # read each time, not cached: a token minted with a key rotated a moment ago
        # would be refused as soon as it is shown (minting is rare next to verifying)
        sealer = self._sealer()
        return await db.call(
            self.pool, lambda conn: signing_keys.active_key(conn, tenant_id, sealer),
            acquire_timeout_s=self.acquire_timeout_s)

    async def _key(self, kid: str) -> SigningKey | None:
        found, key = self._by_kid.lookup(kid)
        if found:
            return key
        sealer = self._sealer()
        try:
            key = await db.call(self.pool, lambda conn: signing_keys.key_by_id(conn, kid, sealer),
                                acquire_timeout_s=self.acquire_timeout_s)
        except SealError:
            key = None  # sealed under another secret: this server cannot vouch for it
        self._by_kid.put(kid, key)
        return key

    def _sealer(self) -> Sealer:
        if self.sealer is None:
            raise TokensUnavailable()
        return self.sealer


# PyJWT's failures, most specific first, and the reason a 401 gives for each
_REASONS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not valid yet (iat or nbf in the future)"),
    (jwt.InvalidSignatureError, "signature does not match (the token was altered)"),
    (jwt.InvalidAlgorithmError, "signing algorithm not accepted"),
    (jwt.InvalidAudienceError, "meant for another audience"),
    (jwt.InvalidIssuerError, "from another issuer"),
)


def decode(token: str, key: Any, algorithms: list[str], audience: str, issuer: str,
           leeway_s: float, required: list[str]) -> dict[str, Any]:
    """PyJWT's verification, its failures as :class:`InvalidToken` naming the reason."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=algorithms, audience=audience, issuer=issuer,
            leeway=leeway_s, options={"require": required})
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"claim {exc.claim!r} is missing") from None
    except jwt.InvalidTokenError as exc:
        reason = next((r for kind, r in _REASONS if isinstance(exc, kind)), "malformed")
        raise InvalidToken(reason) from None
    return claims


def user_of(value: object) -> str:
    """The user id of a token's user claim (1 to 128 characters of text)."""
    if not isinstance(value, str) or not 0 < len(value) <= 128 or not value.isprintable():
        raise InvalidToken("its user claim is not a valid user id")
    return value


def scopes_of(value: object) -> frozenset[TokenScope]:
    """The scopes of a ``scope`` claim; unknown words are ignored, none left is refused."""
    words = value.split() if isinstance(value, str) else []
    scopes = frozenset(s for s in TOKEN_SCOPES if s in words)
    if not scopes:
        raise InvalidToken("it grants none of the scopes read, write, stream")
    return scopes


def _sessions_of(value: object) -> frozenset[uuid.UUID] | None:
    if value is None:
        return None
    try:
        if not isinstance(value, list) or len(value) > MAX_SESSION_IDS:
            raise ValueError
        return frozenset(uuid.UUID(str(v)) for v in value)
    except ValueError:
        raise InvalidToken("its sessions claim is malformed") from None


TOKENS_KEY = web.AppKey("tokens", Tokens)
