"""Async-ingest entries of encrypted tenants: sealed while they wait in Redis.

With ``CHAT_INGEST_MODE=async`` a write waits in the Redis ingest stream until a
consumer stores it (and, should it never be storable, in the dead-letter stream for
good). For an encrypted tenant its messages are sealed under the session's user's data
key, bound to the tenant and session: the stored payload keeps the ids the consumer
routes by and ``"k"`` (the key's id) and ``"x"`` (the sealed messages, base64) instead
of ``"m"``. The consumer opens it with the keyring; once the user is erased (their key
shredded), a copy left anywhere no longer opens.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from chat_storage.storage.crypto.envelope import open_sealed, place, seal
from chat_storage.storage.crypto.keyring import DataKey

SEALED_VERSION = 2
_AD_PART = b"ingest\x00"


def seal_messages(key: DataKey, tenant_id: uuid.UUID, session_id: uuid.UUID,
                  payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` (an entry's plain form) with its messages ``"m"`` sealed."""
    messages = payload["m"]
    sealed = seal(key.aead, {"m": messages}, place(tenant_id, session_id) + _AD_PART)
    out = {k: v for k, v in payload.items() if k != "m"}
    return {**out, "v": SEALED_VERSION, "k": str(key.id),
            "x": base64.b64encode(sealed).decode()}


def key_of(payload: dict[str, Any]) -> uuid.UUID | None:
    """The id of the key that opens ``payload``; ``None`` if it is not sealed."""
    if payload.get("v") != SEALED_VERSION:
        return None
    return uuid.UUID(str(payload["k"]))


def open_messages(key: DataKey, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with its messages opened (the plain form); ``Unreadable``
    (``storage.crypto.envelope``) if they do not open under ``key`` for the tenant and
    session it names."""
    ad = place(uuid.UUID(str(payload["t"])), uuid.UUID(str(payload["s"]))) + _AD_PART
    opened = open_sealed(key.aead, base64.b64decode(str(payload["x"])), ad)
    out = {k: v for k, v in payload.items() if k not in ("k", "x")}
    return {**out, "v": 1, "m": opened["m"]}
