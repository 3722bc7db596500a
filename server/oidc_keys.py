"""The signing keys of trusted OpenID Connect issuers: found by discovery, fetched over
HTTP without blocking the event loop, cached per issuer. docs/oidc.md.

``{issuer}/.well-known/openid-configuration`` names the ``jwks_uri``; both documents
are fetched with aiohttp (no redirects, a timeout, a size cap) and must be JSON objects;
each key is parsed with PyJWT's :class:`~jwt.PyJWK`, once for each asymmetric algorithm
it may verify (its own ``alg`` if it names one, else those of its ``kty`` and curve).
Symmetric (``oct``) and encryption keys are ignored: an issuer's public keys are
public, so an HMAC "verified" with one proves nothing.

An issuer's keys are kept for ``ttl_s``. A token naming a key the cached set lacks
(the issuer rotated) fetches the set again at once, but at most once per
``min_refetch_s`` per issuer: random ``kid`` values cannot make this service hammer the
issuer. Requests that miss at the same time share one fetch (one lock per issuer). A
failed fetch is retried no sooner than ``RETRY_S`` later; meanwhile keys already held
keep working, up to ``STALE_IF_ERROR_S`` past their lifetime.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import math
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web
from jwt import PyJWK
from jwt.exceptions import PyJWTError

log = logging.getLogger(__name__)

RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
OKP_CURVES = ("Ed25519", "Ed448")
# never "none", never HS*: an issuer's key is public, an HMAC under it proves nothing
ALGORITHMS = frozenset((*RSA_ALGORITHMS, *EC_ALGORITHMS.values(), "EdDSA"))

MIN_REFETCH_S = 30.0  # an unknown kid refetches an issuer's keys at most this often
RETRY_S = 5.0  # after a failed fetch, answer 503 at once for this long
STALE_IF_ERROR_S = 3600.0  # keys outlive their lifetime by this much while unreachable
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_KEYS = 100
TIMEOUT = aiohttp.ClientTimeout(total=5.0, sock_connect=3.0)


class FetchError(Exception):
    """An issuer's discovery document or key set could not be had; says why (for logs)."""


class IssuerUnreachable(Exception):
    """No usable keys of the issuer: it could not be reached and none are cached."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"issuer unreachable; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class UnknownKey(Exception):
    """The issuer publishes no key with the token's ``kid``."""


class KeyRefused(Exception):
    """The key exists but not for the token's algorithm (the JWK's ``alg`` or ``kty``
    names another)."""


# kid (None: a key without one) -> algorithm -> key
KeySet = dict[str | None, dict[str, PyJWK]]


@dataclasses.dataclass(slots=True)
class _Issuer:
    keys: KeySet = dataclasses.field(default_factory=dict)
    fetched_at: float = -math.inf  # last successful fetch (monotonic)
    attempted_at: float = -math.inf  # last fetch, whatever its outcome
    generation: int = 0  # fetches finished: a waiter whose fetch someone else did skips
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


class JwksCache:
    """The keys of each trusted issuer, fetched on demand through ``session``."""

    def __init__(self, session: aiohttp.ClientSession, *, ttl_s: float,
                 min_refetch_s: float | None = None) -> None:
        self.session = session
        self.ttl_s = ttl_s
        # keys older than ttl_s are fetched anyway: a shorter lifetime bounds refetches
        self.min_refetch_s = min(MIN_REFETCH_S if min_refetch_s is None else min_refetch_s,
                                 ttl_s)
        self.retry_s = min(RETRY_S, ttl_s)
        self.fetches = 0  # attempted fetches of key sets, for logs and tests
        # only issuers a tenant trusts get here (the caller checks first): bounded
        self._issuers: dict[str, _Issuer] = {}

    async def key(self, issuer: str, kid: str | None, algorithm: str) -> PyJWK:
        """The key of ``issuer`` named ``kid`` for ``algorithm``.

        :class:`UnknownKey`, :class:`KeyRefused`, or :class:`IssuerUnreachable` when no
        keys of the issuer are at hand.
        """
        entry = self._issuers.setdefault(issuer, _Issuer())
        if self._due(entry, kid):
            seen = entry.generation
            async with entry.lock:
                if entry.generation == seen:  # nobody fetched while this one waited
                    await self._refresh(issuer, entry)
        now = time.monotonic()
        if not entry.keys or now > entry.fetched_at + self.ttl_s + STALE_IF_ERROR_S:
            wait = entry.attempted_at + self.retry_s - now
            raise IssuerUnreachable(max(1, math.ceil(wait)))
        by_algorithm = _named(entry.keys, kid)
        if by_algorithm is None:
            raise UnknownKey()
        found = by_algorithm.get(algorithm)
        if found is None:
            raise KeyRefused()
        return found

    async def publishes(self, issuer: str, kid: str | None) -> bool | None:
        """Whether ``issuer`` still publishes key ``kid``, its set fetched again once older
        than ``ttl_s`` (as :meth:`key` would); ``None``: no keys of it are at hand. While
        a fetch fails, the keys held are the answer, as they are for :meth:`key`."""
        entry = self._issuers.setdefault(issuer, _Issuer())
        if time.monotonic() >= entry.fetched_at + self.ttl_s and self._due(entry, kid):
            seen = entry.generation
            async with entry.lock:
                if entry.generation == seen:
                    await self._refresh(issuer, entry)
        if not entry.keys:
            return None
        return _named(entry.keys, kid) is not None

    def _due(self, entry: _Issuer, kid: str | None) -> bool:
        now = time.monotonic()
        since_attempt = now - entry.attempted_at
        if now >= entry.fetched_at + self.ttl_s:  # none yet, or expired
            return since_attempt >= self.retry_s
        return _named(entry.keys, kid) is None and since_attempt >= self.min_refetch_s

    async def _refresh(self, issuer: str, entry: _Issuer) -> None:
        # a fetch cancelled half-way leaves no trace: the waiters do their own
        self.fetches += 1
        try:
            keys = await self._fetch(issuer)
        except FetchError as exc:
            log.warning("OIDC issuer keys unavailable", extra={
                "issuer": issuer, "error": str(exc), "cached_keys": len(entry.keys)})
        else:
            entry.keys, entry.fetched_at = keys, time.monotonic()
            log.info("OIDC issuer keys fetched", extra={"issuer": issuer, "keys": len(keys)})
        entry.attempted_at = time.monotonic()
        entry.generation += 1

    async def _fetch(self, issuer: str) -> KeySet:
        if not allowed_url(issuer):
            raise FetchError("the issuer is not https (http on loopback only)")
        discovery = await self._json(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if discovery.get("issuer") != issuer:
            raise FetchError("its discovery document names another issuer")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not allowed_url(jwks_uri):
            raise FetchError("its jwks_uri is missing or not https (http on loopback only)")
        return parse_jwks(await self._json(jwks_uri))

    async def _json(self, url: str) -> dict[str, Any]:
        body = bytearray()
        try:
            async with self.session.get(url, allow_redirects=False, timeout=TIMEOUT,
                                        headers={"Accept": "application/json"}) as response:
                if response.status != 200:
                    raise FetchError(f"{url} answered {response.status}")
                if (response.content_length or 0) > MAX_DOCUMENT_BYTES:
                    raise FetchError(f"{url} is larger than {MAX_DOCUMENT_BYTES} bytes")
                # bounded: the loop ends at the cap, whatever the server sends
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise FetchError(f"{url} is larger than {MAX_DOCUMENT_BYTES} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"{url}: {type(exc).__name__} {exc}") from None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FetchError(f"{url} is not JSON") from None
        if not isinstance(document, dict):
            raise FetchError(f"{url} is not a JSON object")
        return document


def parse_jwks(document: dict[str, Any]) -> KeySet:
    """The signing keys of a JWK set, each for the algorithms it may verify;
    :class:`FetchError` if it has none."""
    listed = document.get("keys")
    if not isinstance(listed, list) or len(listed) > MAX_KEYS:
        raise FetchError(f"its JWK set has no 'keys' list of at most {MAX_KEYS}")
    keys: KeySet = {}
    for jwk in listed:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        for algorithm in algorithms_of(jwk):
            try:
                keys.setdefault(kid, {})[algorithm] = PyJWK(jwk, algorithm)
            except PyJWTError as exc:
                log.info("OIDC key skipped", extra={"kid": kid, "error": str(exc)})
    if not any(keys.values()):
        raise FetchError("its JWK set has no usable asymmetric signing key")
    return {kid: by_algorithm for kid, by_algorithm in keys.items() if by_algorithm}


def algorithms_of(jwk: dict[str, Any]) -> tuple[str, ...]:
    """What ``jwk`` may verify: its ``alg`` if it names one its ``kty`` allows, else every
    algorithm of its ``kty`` (and curve); nothing for a symmetric or unknown key."""
    kty, curve = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        allowed: tuple[str, ...] = RSA_ALGORITHMS
    elif kty == "EC" and isinstance(curve, str) and curve in EC_ALGORITHMS:
        allowed = (EC_ALGORITHMS[curve],)
    elif kty == "OKP" and curve in OKP_CURVES:
        allowed = ("EdDSA",)
    else:
        return ()
    named = jwk.get("alg")
    if named is None:
        return allowed
    return (named,) if named in allowed else ()


def _named(keys: KeySet, kid: str | None) -> dict[str, PyJWK] | None:
    """The keys named ``kid``; a token naming none may use the set's only key."""
    if kid is None and len(keys) == 1:
        return next(iter(keys.values()))
    return keys.get(kid)


def allowed_url(url: str) -> bool:
    """Whether keys may be fetched from ``url``: https, or http on a loopback host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    host = parts.hostname or ""
    if not host or parts.scheme not in ("http", "https"):
        return False
    if parts.scheme == "https":
        return True
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


JWKS_KEY = web.AppKey("oidc_jwks", JwksCache)
