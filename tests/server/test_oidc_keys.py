"""An issuer's keys (server/oidc_keys.py): what is taken from a JWKS, what is refused,
and that misses at the same time share one fetch. Against a real issuer on 127.0.0.1
(tests/support/idp.py) through a real aiohttp client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from chat_storage.server.oidc_keys import (
    MAX_DOCUMENT_BYTES,
    IssuerUnreachable,
    JwksCache,
    UnknownKey,
    algorithms_of,
    allowed_url,
)
from tests.support.idp import DISCOVERY, JWKS, Idp


@pytest.fixture
async def cache() -> AsyncIterator[JwksCache]:
    async with aiohttp.ClientSession() as session:
        yield JwksCache(session, ttl_s=600.0)


async def test_misses_at_once_share_one_fetch(idp: Idp, cache: JwksCache) -> None:
    # all ten reach the issuer's lock before the first fetch can have an answer
    keys = await asyncio.gather(*(cache.key(idp.issuer, "rsa-1", "RS256") for _ in range(10)))
    assert {id(k) for k in keys} == {id(keys[0])}
    assert (idp.requests[DISCOVERY], idp.requests[JWKS], cache.fetches) == (1, 1, 1)
    with pytest.raises(UnknownKey):
        await asyncio.gather(*(cache.key(idp.issuer, f"kid-{i}", "RS256") for i in range(10)))
    assert idp.requests[JWKS] == 1  # fetched just now: no refetch for unknown kids


@pytest.mark.parametrize("served", [
    b"too large",  # replaced below: a good key set, padded past the cap
    b"not json",
    b"[1, 2]",  # not an object
    b'{"keys": []}',
    b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}',  # symmetric only
])
async def test_a_bad_key_set_leaves_the_issuer_unreachable(idp: Idp, cache: JwksCache,
                                                           served: bytes) -> None:
    if served == b"too large":
        served = json.dumps({"keys": [idp.jwk("rsa-1")],
                             "padding": "x" * MAX_DOCUMENT_BYTES}).encode()
    idp.jwks_override = served
    with pytest.raises(IssuerUnreachable) as caught:
        await cache.key(idp.issuer, "rsa-1", "RS256")
    assert caught.value.retry_after_s >= 1
    assert idp.requests[JWKS] == 1


async def test_discovery_must_name_the_issuer_and_a_safe_jwks_uri(idp: Idp,
                                                                  cache: JwksCache) -> None:
    # 0.0.0.0 reaches this host on Linux, but it is not a loopback address: refused
    idp.jwks_uri = idp.issuer.replace("127.0.0.1", "0.0.0.0") + JWKS
    with pytest.raises(IssuerUnreachable):
        await cache.key(idp.issuer, "rsa-1", "RS256")
    real = idp.issuer
    idp.issuer, idp.jwks_uri = real + "/elsewhere", real + JWKS  # its discovery names another
    with pytest.raises(IssuerUnreachable):
        await JwksCache(cache.session, ttl_s=600.0).key(real, "rsa-1", "RS256")
    assert idp.requests[JWKS] == 0


def test_algorithms_a_jwk_may_verify() -> None:
    rsa: dict[str, Any] = {"kty": "RSA", "n": "x", "e": "AQAB"}
    assert algorithms_of(rsa) == ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
    assert algorithms_of({**rsa, "alg": "PS384"}) == ("PS384",)
    assert algorithms_of({**rsa, "alg": "ES256"}) == ()  # alg and kty disagree
    assert algorithms_of({**rsa, "alg": "HS256"}) == ()
    assert algorithms_of({"kty": "EC", "crv": "P-384"}) == ("ES384",)
    assert algorithms_of({"kty": "EC", "crv": "secp256k1"}) == ()
    assert algorithms_of({"kty": "OKP", "crv": "Ed25519"}) == ("EdDSA",)
    assert algorithms_of({"kty": "oct", "k": "c2VjcmV0"}) == ()


def test_keys_are_fetched_over_https_or_loopback_http_only() -> None:
    assert allowed_url("https://idp.example/jwks")
    assert allowed_url("http://127.0.0.1:8080/jwks") and allowed_url("http://[::1]/jwks")
    assert allowed_url("http://localhost/jwks")
    assert not allowed_url("http://idp.example/jwks")
    assert not allowed_url("file:///etc/passwd") and not allowed_url("jwks")
