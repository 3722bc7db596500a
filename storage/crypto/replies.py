"""Idempotent replies of encrypted tenants: kept sealed, opened for a replay.

A recorded reply is a copy of what was written (a message, a session's title); kept
plain for ``CHAT_IDEMPOTENCY_TTL_S`` it would undo encryption at rest. Sealed under the
writing user's data key and bound to the tenant and the Idempotency-Key, it is stored
as ``{"sealed_reply": <base64>, "data_key_id": <uuid>}`` and shredded with the user.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import asyncpg
import orjson

from chat_storage.storage import jsoncodec
from chat_storage.storage.crypto.envelope import Unreadable, open_sealed, seal
from chat_storage.storage.crypto.keyring import DataKey, Keyring

SEALED = "sealed_reply"


def _ad(tenant_id: uuid.UUID, key: str) -> bytes:
    return f"chat-storage/v1/{tenant_id}/idempotency/".encode() + key.encode()


def seal_reply(data_key: DataKey, tenant_id: uuid.UUID, key: str, reply: Any) -> dict[str, str]:
    """What is stored for ``reply`` (the body as the API encodes it)."""
    body = jsoncodec.dumps(reply).decode()
    return {SEALED: base64.b64encode(seal(data_key.aead, {"body": body},
                                          _ad(tenant_id, key))).decode(),
            "data_key_id": str(data_key.id)}


async def open_reply(conn: asyncpg.Connection, keyring: Keyring | None, tenant_id: uuid.UUID,
                     key: str, stored: bytes) -> bytes:
    """The body to replay: ``stored`` itself, or what it seals."""
    if not stored.startswith(b'{"' + SEALED.encode()):
        return stored
    envelope = orjson.loads(stored)
    if keyring is None:
        raise Unreadable("a sealed reply, and no CHAT_ENCRYPTION_KEK to open it")
    key_id = uuid.UUID(envelope["data_key_id"])
    data_key = (await keyring.by_ids(conn, {key_id})).get(key_id)
    if data_key is None:
        raise Unreadable("the data key of this reply was destroyed")
    fields = open_sealed(data_key.aead, base64.b64decode(envelope[SEALED]), _ad(tenant_id, key))
    return str(fields["body"]).encode()
