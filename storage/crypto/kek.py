"""Key-encryption keys (KEKs): they wrap and unwrap data keys, and nothing else.

The provider is chosen by the URL in ``CHAT_ENCRYPTION_KEK``:

- ``local:<64 hex digits>`` a 256-bit key given inline (development, tests);
- ``local-file:/path`` the same, read from a file holding the 64 hex digits (a mounted
  secret);
- ``aws-kms:<key id or ARN>`` AWS KMS (``Encrypt``/``Decrypt`` through aiobotocore):
  the key never leaves KMS.

Every wrap is bound to a context (the data key's tenant and user); a wrapped key
moved to another user's row does not unwrap. A KEK's ``id`` names it without
revealing it, so rows say which KEK wrapped them and rotation knows what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any, Protocol

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chat_storage.storage.errors import StorageError

_NONCE_BYTES = 12
_LOCAL_VERSION = b"\x01"
KMS_TIMEOUT_S = 5.0


class KekError(StorageError):
    """A KEK that cannot be had, or a wrapped key that does not unwrap under it."""


class Kek(Protocol):
    """Wraps and unwraps data keys; ``id`` names the key, not its secret."""

    id: str

    async def wrap(self, data_key: bytes, context: dict[str, str]) -> bytes:
        """``data_key`` wrapped; it unwraps only with the same ``context``."""
        ...

    async def unwrap(self, wrapped: bytes, context: dict[str, str]) -> bytes:
        """The data key in ``wrapped``; :class:`KekError` if it does not unwrap."""
        ...

    async def close(self) -> None:
        """Release what the provider holds (a client)."""
        ...


def _aad(context: dict[str, str]) -> bytes:
    return "\x00".join(f"{k}={context[k]}" for k in sorted(context)).encode()


class LocalKek:
    """A KEK held in this process's memory: AES-256-GCM key wrap."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise KekError("a local KEK is 32 bytes (64 hex digits)")
        self._aead = AESGCM(key)
        # a fingerprint, not the key: SHA-256 of a domain tag and the key
        self.id = "local:" + hashlib.sha256(b"chat-storage/kek-id\x00" + key).hexdigest()[:16]

    async def wrap(self, data_key: bytes, context: dict[str, str]) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _LOCAL_VERSION + nonce + self._aead.encrypt(nonce, data_key, _aad(context))

    async def unwrap(self, wrapped: bytes, context: dict[str, str]) -> bytes:
        if wrapped[:1] != _LOCAL_VERSION or len(wrapped) < 1 + _NONCE_BYTES + 16:
            raise KekError("not a key wrapped by a local KEK")
        nonce = wrapped[1:1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, wrapped[1 + _NONCE_BYTES:], _aad(context))
        except InvalidTag:
            raise KekError("wrapped key does not unwrap under this KEK") from None

    async def close(self) -> None:
        return None


class KmsKek:
    """A KEK in AWS KMS: ``Encrypt``/``Decrypt`` with an encryption context."""

    def __init__(self, client: Any, key_id: str, stack: contextlib.AsyncExitStack) -> None:
        self._client = client
        self._key_id = key_id
        self._stack = stack
        self.id = "aws-kms:" + key_id

    async def wrap(self, data_key: bytes, context: dict[str, str]) -> bytes:
        try:
            answer = await self._client.encrypt(
                KeyId=self._key_id, Plaintext=data_key, EncryptionContext=context)
        except (BotoCoreError, ClientError) as exc:
            raise KekError(f"KMS Encrypt failed: {type(exc).__name__}") from None
        return bytes(answer["CiphertextBlob"])

    async def unwrap(self, wrapped: bytes, context: dict[str, str]) -> bytes:
        try:
            answer = await self._client.decrypt(
                KeyId=self._key_id, CiphertextBlob=wrapped, EncryptionContext=context)
        except (BotoCoreError, ClientError) as exc:
            raise KekError(f"KMS Decrypt failed: {type(exc).__name__}") from None
        return bytes(answer["Plaintext"])

    async def close(self) -> None:
        await self._stack.aclose()


def _hex_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise KekError(f"{where}: expected 64 hex digits") from None
    if len(key) != 32:
        raise KekError(f"{where}: expected 64 hex digits (a 256-bit key)")
    return key


def check_url(url: str) -> None:
    """``ValueError`` unless ``url`` names a provider (nothing is read or reached)."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in ("local", "local-file", "aws-kms") or not rest:
        raise ValueError("expected local:<64 hex>, local-file:/path or aws-kms:<key id>")
    if scheme == "local":
        try:
            _hex_key(rest, "local")
        except KekError as exc:
            raise ValueError(str(exc)) from None


async def open_kek(url: str, *, kms_endpoint_url: str | None = None,
                   region: str | None = None) -> Kek:
    """The KEK that ``url`` names; :class:`KekError` if it cannot be had."""
    scheme, _, rest = url.partition(":")
    if scheme == "local":
        return LocalKek(_hex_key(rest, "local"))
    if scheme == "local-file":
        try:
            text = await asyncio.to_thread(Path(rest).read_text)
        except OSError as exc:
            raise KekError(f"local-file: cannot read the KEK file ({exc.strerror})") from None
        return LocalKek(_hex_key(text, "local-file"))
    if scheme == "aws-kms":
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(get_session().create_client(
            "kms", endpoint_url=kms_endpoint_url, region_name=region or "us-east-1",
            config=Config(connect_timeout=KMS_TIMEOUT_S, read_timeout=KMS_TIMEOUT_S,
                          retries={"max_attempts": 3})))
        return KmsKek(client, rest, stack)
    raise KekError("CHAT_ENCRYPTION_KEK: expected local:, local-file: or aws-kms:")
