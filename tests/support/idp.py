"""A local OpenID Connect identity provider for tests: discovery and a JWKS served by an
aiohttp app on 127.0.0.1, keys made here with ``cryptography``, tokens signed with them.

A real HTTP server on a real socket (no network beyond loopback): the service fetches
its keys exactly as it would from a real issuer. It counts the requests it answers, so
a test can tell how often the service came for the keys.
"""

from __future__ import annotations

import collections
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

DISCOVERY = "/.well-known/openid-configuration"
JWKS = "/jwks.json"


class Idp:
    """Keys by ``kid`` (RSA ones for RS256, EC P-256 ones for ES256); ``published`` are
    the kids its JWKS lists. Its issuer is ``http://127.0.0.1:PORT/realms/<random>``,
    set by :meth:`listening_on`: a realm of its own, so that no tenant of an earlier
    test trusts it, even on a port used again."""

    def __init__(self) -> None:
        self.realm = f"/realms/{uuid.uuid4().hex[:12]}"
        self.issuer = ""
        self.private: dict[str, tuple[Any, str]] = {}
        self.published: list[str] = []
        self.requests: collections.Counter[str] = collections.Counter()
        # served instead of the JWKS when set: a JSON value, or raw bytes
        self.jwks_override: Any = None
        self.jwks_uri: str | None = None  # named by discovery instead of its own, when set
        self.add_key("rsa-1", "RS256")
        self.add_key("ec-1", "ES256")

    def add_key(self, kid: str, algorithm: str, *, publish: bool = True) -> None:
        """Make a key (RSA for RS*/PS*, P-256 for ES256) and list it in the JWKS."""
        if algorithm.startswith("ES"):
            key: Any = ec.generate_private_key(ec.SECP256R1())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private[kid] = (key, algorithm)
        if publish:
            self.published.append(kid)

    def listening_on(self, port: int) -> str:
        """Set and return the issuer URL for a server on ``port``."""
        self.issuer = f"http://127.0.0.1:{port}{self.realm}"
        return self.issuer

    def jwk(self, kid: str) -> dict[str, Any]:
        """The public JWK of ``kid``, naming its algorithm."""
        key, algorithm = self.private[kid]
        codec: Any = ECAlgorithm if algorithm.startswith("ES") else RSAAlgorithm
        jwk: dict[str, Any] = codec.to_jwk(key.public_key(), as_dict=True)
        return {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}

    def public_pem(self, kid: str) -> bytes:
        """The public key of ``kid`` in PEM (for the key-confusion attack)."""
        from cryptography.hazmat.primitives import serialization

        return bytes(self.private[kid][0].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Claims of a valid token for audience ``chat-app`` and user ``alice``."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": "chat-app", "sub": "alice",
                                  "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str = "rsa-1", *, algorithm: str | None = None,
              **claims: Any) -> str:
        """A token signed by key ``kid``; ``claims`` override :meth:`claims` (None drops)."""
        key, own = self.private[kid]
        return jwt.encode(self.claims(**claims), key, algorithm=algorithm or own,
                          headers={"kid": kid})

    def app(self) -> web.Application:
        """The issuer's HTTP side: discovery and the JWKS."""
        app = web.Application()
        app.router.add_get(self.realm + DISCOVERY, self._discovery)
        app.router.add_get(self.realm + JWKS, self._jwks)
        return app

    async def _discovery(self, request: web.Request) -> web.Response:
        self.requests[DISCOVERY] += 1
        return web.json_response({"issuer": self.issuer,
                                  "jwks_uri": self.jwks_uri or self.issuer + JWKS})

    async def _jwks(self, request: web.Request) -> web.Response:
        self.requests[JWKS] += 1
        if isinstance(self.jwks_override, bytes):
            return web.Response(body=self.jwks_override, content_type="application/json")
        if self.jwks_override is not None:
            return web.json_response(self.jwks_override)
        return web.json_response({"keys": [self.jwk(kid) for kid in self.published]})
