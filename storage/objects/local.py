"""The local object store: files in a directory, for the zero-setup single machine.

Its URLs point at the service itself (``/objects/{token}``, see
``server.objects``). A token is a signed, expiring grant for one method on
one key: for an upload it also fixes the size, type and SHA-256, and
:meth:`LocalStore.write` stores only a body that matches all three, so a file that
exists is always the one announced. The signing key comes from the settings or is
created once in the directory (workers of one machine share it).

A file of an encrypted tenant is written sealed (``storage.crypto.files``): the caller
passes a :class:`Sealer` made with the owning user's data key. :meth:`LocalStore.stat`
answers the plain size and SHA-256 its header records; :meth:`LocalStore.read` and
:meth:`LocalStore.put` move stored bytes as they are (a backup copies ciphertext).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from chat_storage.storage.crypto.files import Sealer, read_header
from chat_storage.storage.keyfile import read_or_create
from chat_storage.storage.objects.base import CHUNK_BYTES, ObjectInfo, Upload, expires_at

PREFIX = "/objects/"
KEY_FILE = ".signing-key"
_VALID_KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")


class BadToken(Exception):
    """A URL token that is forged, expired or for another method."""


class UploadRefused(Exception):
    """An upload body that is not the announced file; the message says how."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(root: Path, configured: str | None) -> bytes:
    """The configured key, or the one kept in ``root`` (made on first use)."""
    if configured:
        return configured.encode()
    return read_or_create(root / KEY_FILE)


# the claims of each method's token and their types (sign() adds exp)
_CLAIMS: dict[str, dict[str, type]] = {
    "PUT": {"m": str, "k": str, "s": int, "t": str, "h": str, "exp": int},
    "GET": {"m": str, "k": str, "n": str, "t": str, "exp": int},
}


def _well_formed(claims: dict[str, Any]) -> bool:
    """Whether ``claims`` are those a token of this store has, each of its type, with a
    key that names a file under the root. A MAC proves who signed, not that the signer
    (another version, a leaked key) wrote what :meth:`LocalStore.open_token`'s callers
    index and cast."""
    wanted = _CLAIMS.get(claims.get("m"))  # type: ignore[arg-type]
    if wanted is None or claims.keys() != wanted.keys():
        return False
    if not all(isinstance(claims[name], kind) and not isinstance(claims[name], bool)
               for name, kind in wanted.items()):
        return False
    return bool(_VALID_KEY.match(claims["k"])) and ".." not in claims["k"] and (
        "s" not in claims or claims["s"] >= 0)


class LocalStore:
    """Objects as files under ``root``; URLs are paths on this service."""

    def __init__(self, root: Path, secret: bytes) -> None:
        self.root = root
        self._secret = secret

    # -- URLs ---------------------------------------------------------------------------

    def sign(self, claims: Mapping[str, Any], expires_s: int) -> str:
        payload = _b64(orjson.dumps({**claims, "exp": int(time.time()) + expires_s}))
        mac = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return f"{payload}.{_b64(mac)}"

    def open_token(self, token: str, method: str) -> dict[str, Any]:
        """The claims of a valid, unexpired ``token`` for ``method``; else :class:`BadToken`."""
        payload, _, mac = token.partition(".")
        want = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        try:
            good = hmac.compare_digest(_unb64(mac), want)
            claims: dict[str, Any] = orjson.loads(_unb64(payload)) if good else {}
        except ValueError:
            good = False
        if not good or not isinstance(claims, dict) or not _well_formed(claims):
            raise BadToken("this URL is not valid")
        if claims["m"] != method:
            raise BadToken(f"this URL is not for {method}")
        if claims["exp"] < time.time():
            raise BadToken("this URL has expired")
        return claims

    async def upload_url(self, key: str, *, size: int, mime: str, sha256: str,
                         expires_s: int) -> Upload:
        self.path(key)  # refuse a bad key now, not at upload time
        token = self.sign({"m": "PUT", "k": key, "s": size, "t": mime, "h": sha256}, expires_s)
        return Upload(url=PREFIX + token, method="PUT", headers={"Content-Type": mime},
                      expires_at=expires_at(expires_s))

    async def download_url(self, key: str, *, name: str, mime: str, expires_s: int) -> str:
        return PREFIX + self.sign({"m": "GET", "k": key, "n": name, "t": mime}, expires_s)

    # -- objects ------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        if not _VALID_KEY.match(key) or ".." in key:
            raise ValueError(f"bad object key {key!r}")
        return self.root / key

    def _paths(self, key: str) -> tuple[Path, Path]:
        """The file of ``key`` and a hidden partial file beside it, renamed into place."""
        path = self.path(key)
        return path, path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")

    async def write(self, key: str, body: AsyncIterable[bytes], *, size: int,
                    sha256: str, sealer: Sealer | None = None) -> None:
        """Store ``body`` under ``key`` only if it is ``size`` bytes hashing to ``sha256``;
        sealed by ``sealer`` if given (made for this key, size and SHA-256)."""
        path, tmp = self._paths(key)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        h, got = hashlib.sha256(), 0
        try:
            f = await asyncio.to_thread(open, tmp, "wb")
            try:
                if sealer is not None:
                    await asyncio.to_thread(f.write, sealer.header)
                async for chunk in body:
                    got += len(chunk)
                    if got > size:
                        raise UploadRefused(f"the body is longer than the announced {size} bytes")
                    h.update(chunk)
                    out = chunk if sealer is None else sealer.update(chunk)
                    await asyncio.to_thread(f.write, out)
                if sealer is not None and got == size:
                    await asyncio.to_thread(f.write, sealer.finish())
            finally:
                await asyncio.to_thread(f.close)
            if got != size:
                raise UploadRefused(f"the body has {got} bytes, not the announced {size}")
            if h.hexdigest() != sha256:
                raise UploadRefused("the body's sha256 differs from the one announced")
            await asyncio.to_thread(os.replace, tmp, path)
        finally:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)

    async def stat(self, key: str) -> ObjectInfo | None:
        """The size (a sealed file: the plain size and SHA-256 its header records)."""
        path = self.path(key)
        try:
            st = await asyncio.to_thread(path.stat)
            header = await asyncio.to_thread(read_header, path)
        except FileNotFoundError:
            return None
        if header is not None:
            return ObjectInfo(size=header.size, sha256=header.sha256)
        return ObjectInfo(size=st.st_size)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        f = await asyncio.to_thread(open, self.path(key), "rb")
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK_BYTES):
                yield chunk
        finally:
            f.close()

    async def put(self, key: str, data: bytes, mime: str) -> None:
        path, tmp = self._paths(key)

        def store() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)

        await asyncio.to_thread(store)

    async def delete(self, keys: Sequence[str]) -> None:
        def remove() -> None:
            for key in keys:
                self.path(key).unlink(missing_ok=True)

        await asyncio.to_thread(remove)

    async def list_keys(self, prefix: str) -> list[str]:
        base = self.path(prefix.rstrip("/"))

        def walk() -> list[str]:
            return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                          if p.is_file() and not p.name.startswith("."))

        return await asyncio.to_thread(walk) if base.is_dir() else []

    async def close(self) -> None:
        return None
