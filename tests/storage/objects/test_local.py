"""The local store: signed URLs, uploads that must match, files on disk."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chat_storage.storage.objects import verify
from chat_storage.storage.objects.local import BadToken, LocalStore, UploadRefused, signing_key


async def _body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _token(url: str) -> str:
    assert url.startswith("/objects/")
    return url.removeprefix("/objects/")


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path, signing_key(tmp_path, None))


def test_the_signing_key_is_made_once_and_kept(tmp_path: Path) -> None:
    first = signing_key(tmp_path, None)
    assert len(first) == 64 and signing_key(tmp_path, None) == first
    assert os.stat(tmp_path / ".signing-key").st_mode & 0o777 == 0o600
    assert signing_key(tmp_path, "configured") == b"configured"


async def test_a_token_grants_one_method_until_it_expires(store: LocalStore,
                                                          tmp_path: Path) -> None:
    up = await store.upload_url("t/s/a", size=3, mime="text/plain", sha256="0" * 64,
                                expires_s=60)
    claims = store.open_token(_token(up.url), "PUT")
    assert (claims["k"], claims["s"], claims["t"]) == ("t/s/a", 3, "text/plain")
    with pytest.raises(BadToken, match="not for GET"):
        store.open_token(_token(up.url), "GET")
    other = LocalStore(tmp_path, b"another key")
    with pytest.raises(BadToken, match="not valid"):
        other.open_token(_token(up.url), "PUT")
    payload, _, mac = _token(up.url).partition(".")
    forged = store.sign({"m": "PUT", "k": "t/s/other", "s": 3, "t": "text/plain",
                         "h": "0" * 64}, 60).split(".")[0]
    for bad in (f"{forged}.{mac}", f"{payload}.{mac[:-2]}", "garbage", "", "a.b.c"):
        with pytest.raises(BadToken):
            store.open_token(bad, "PUT")
    expired = store.sign({"m": "GET", "k": "t/s/a", "n": "a", "t": "text/plain"}, -1)
    with pytest.raises(BadToken, match="expired"):
        store.open_token(expired, "GET")
    assert up.expires_at.timestamp() == pytest.approx(time.time() + 60, abs=2)


async def test_write_keeps_only_the_announced_file(store: LocalStore, tmp_path: Path) -> None:
    data = b"hello, attachment"
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(UploadRefused, match="longer"):
        await store.write("t/s/a", _body(data, b"!"), size=len(data), sha256=digest)
    with pytest.raises(UploadRefused, match="has 5 bytes"):
        await store.write("t/s/a", _body(data[:5]), size=len(data), sha256=digest)
    with pytest.raises(UploadRefused, match="sha256"):
        await store.write("t/s/a", _body(data.upper()), size=len(data), sha256=digest)
    assert await store.stat("t/s/a") is None
    assert [p.name for p in (tmp_path / "t" / "s").iterdir()] == []  # no partial files

    await store.write("t/s/a", _body(data[:4], data[4:]), size=len(data), sha256=digest)
    await verify(store, "t/s/a", size=len(data), sha256=digest)
    assert b"".join([c async for c in store.read("t/s/a")]) == data
    await store.delete(["t/s/a", "t/s/missing"])
    assert await store.stat("t/s/a") is None


async def test_keys_cannot_leave_the_directory(store: LocalStore) -> None:
    for bad in ("../x", "t/../../x", "/etc/passwd", "t//x", ".hidden", ""):
        with pytest.raises(ValueError, match="bad object key"):
            store.path(bad)
        with pytest.raises(ValueError):
            await store.upload_url(bad, size=1, mime="a/b", sha256="0" * 64, expires_s=1)
    await store.put("archives/2026/11.jsonl.gz", b"x", "application/gzip")
    assert (store.root / "archives/2026/11.jsonl.gz").read_bytes() == b"x"
