"""Sealing a row's fields under its user's data key (AES-256-GCM).

A sealed value is ``version (1) || nonce (12) || ciphertext and tag`` of the fields as
JSON. Its associated data names the tenant, the session and the row (a message id,
or ``title`` for a session's title): copied into another row, tenant or session, it
does not open.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chat_storage.storage.errors import StorageError

_VERSION = b"\x01"
_NONCE_BYTES = 12


class Unreadable(StorageError):
    """Sealed content that does not open: its key is gone (shredded) or it was moved."""


_AD_PREFIX = b"chat-storage/v1\x00"


def associated(tenant_id: uuid.UUID, session_id: uuid.UUID, row: uuid.UUID | str) -> bytes:
    """What binds a sealed value to its place: the ids' 16 bytes each (a read opens a
    page of rows: no text formatting per row), then the row's id or its name."""
    return place(tenant_id, session_id) + row_part(row)


def place(tenant_id: uuid.UUID, session_id: uuid.UUID) -> bytes:
    """The part of :func:`associated` that names the tenant and session."""
    return _AD_PREFIX + tenant_id.bytes + session_id.bytes


def row_part(row: uuid.UUID | str) -> bytes:
    """The part of :func:`associated` that names the row."""
    return row.bytes if isinstance(row, uuid.UUID) else b"\x00" + row.encode()


def seal(key: AESGCM, fields: dict[str, Any], ad: bytes) -> bytes:
    """``fields`` sealed under the data ``key``, bound to ``ad``."""
    nonce = os.urandom(_NONCE_BYTES)
    return _VERSION + nonce + key.encrypt(nonce, orjson.dumps(fields), ad)


def open_sealed(key: AESGCM, sealed: bytes, ad: bytes) -> dict[str, Any]:
    """The fields in ``sealed``; :class:`Unreadable` if it does not open."""
    if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
        raise Unreadable("not a sealed value of this version")
    try:
        plain = key.decrypt(sealed[1:1 + _NONCE_BYTES],
                                         sealed[1 + _NONCE_BYTES:], ad)
    except InvalidTag:
        raise Unreadable("sealed value does not open under its key") from None
    fields: dict[str, Any] = orjson.loads(plain)
    return fields
