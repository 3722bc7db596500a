"""Sealing small secrets under the server's secret (``CHAT_SECRET_KEY``).

A sealed value is AES-256-GCM under a key derived from that secret with HKDF, with
associated data that names what the value is for (a signing key's id and tenant): a
sealed value copied into another row does not open. The format is
``version (1 byte) || nonce (12) || ciphertext and tag``.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"
_NONCE_BYTES = 12


class SealError(Exception):
    """A sealed value that does not open: another secret, another row, or damaged."""


class Sealer:
    """Seals and opens values under one server secret."""

    def __init__(self, secret: bytes, purpose: bytes = b"chat-storage/signing-keys/v1") -> None:
        if len(secret) < 32:
            raise ValueError("the server secret must be at least 32 bytes")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """``plaintext`` sealed; it opens only with the same ``context``."""
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        """The plaintext of ``sealed``; :class:`SealError` if it does not open."""
        if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
            raise SealError("not a sealed value of this version")
        nonce = sealed[1:1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + _NONCE_BYTES:], context)
        except InvalidTag:
            raise SealError("sealed value does not open with this secret") from None
