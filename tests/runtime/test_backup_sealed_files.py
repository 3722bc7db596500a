"""A backup copies an encrypted tenant's sealed files as they are stored (ciphertext, no
key), checked against the attachment row by the plain size and SHA-256 in the header.
Real files: the local object store and a directory backup."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chat_storage.runtime.backup import BackupError, _copy_one
from chat_storage.runtime.backup_store import DirBackupStore
from chat_storage.storage.crypto.files import Sealer, parse_header
from chat_storage.storage.crypto.keyring import DataKey
from chat_storage.storage.objects.local import LocalStore
from chat_storage.storage.snapshot import StoredObject


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_backup_copies_sealed_files_as_ciphertext_checked_by_their_header(
        tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects", b"test key")
    tenant = uuid.uuid4()
    key = f"{tenant}/{uuid.uuid4()}/{uuid.uuid4()}"
    data = b"SECRET-" + os.urandom(200_000)
    digest = hashlib.sha256(data).hexdigest()
    data_key = DataKey(uuid.uuid4(), AESGCM(AESGCM.generate_key(bit_length=256)))
    await store.write(key, _body(data), size=len(data), sha256=digest,
                      sealer=Sealer(data_key, tenant, key, size=len(data), sha256=digest))
    target = DirBackupStore(tmp_path / "backup")
    row = StoredObject(key=key, mime="text/plain", size=len(data), sha256=digest, ready=True)
    entry = await _copy_one(store, target, row)
    assert entry is not None
    copied = b"".join(p.read_bytes() for p in (tmp_path / "backup").rglob("*") if p.is_file())
    assert b"SECRET-" not in copied and parse_header(copied) is not None
    # the entry describes the stored bytes, which restore checks and puts back as they are
    assert entry.sha256 == hashlib.sha256(copied).hexdigest() and entry.size == len(copied)
    # a row that names another file is still caught
    other = StoredObject(key=key, mime="text/plain", size=len(data),
                         sha256=hashlib.sha256(b"other").hexdigest(), ready=True)
    with pytest.raises(BackupError):
        await _copy_one(store, target, other)
