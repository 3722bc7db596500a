"""Live events of encrypted tenants, sealed for the broker (Redis) and opened by readers.

An event's JSON body is sealed whole (AES-256-GCM) under the session's user's data key,
the key that seals the session's rows. What the broker keeps is::

    "!" header "\\n" nonce (12) ciphertext-and-tag

The header is plain JSON: the event's ``type``, ``stream_id``, ``seq``, ``offset`` and
the data key's id ``k`` (ids and positions, which Postgres keeps plain too). It stays
readable so the broker's housekeeping still works on sealed events (a deleted
message's events are found by its id, a redacting tenant's deltas by their type and
stream) and so a reader knows which key opens it. The associated data is the tenant,
the session and the header's exact bytes: an entry copied to another session, or its
ciphertext put under another header (another seq, offset or stream), does not open.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag

from chat_storage.storage.crypto.envelope import Unreadable, place
from chat_storage.storage.crypto.keyring import DataKey

MARK = b"!"  # a sealed body starts with it; a plain one is a JSON object ("{")
_NONCE_BYTES = 12
_AD_PART = b"event\x00"


@dataclasses.dataclass(frozen=True, slots=True)
class SealedEvent:
    """A sealed body taken apart: its header (parsed and as stored) and its ciphertext."""

    header: dict[str, Any]
    head: bytes
    sealed: bytes

    @property
    def key_id(self) -> uuid.UUID:
        """The id of the data key that opens it."""
        return uuid.UUID(str(self.header["k"]))


def is_sealed(body: bytes) -> bool:
    """Whether ``body`` is a sealed event (else: a plain JSON one)."""
    return body[:1] == MARK


def seal_event(key: DataKey, tenant_id: uuid.UUID, session_id: uuid.UUID,
               header: dict[str, Any], body: bytes) -> bytes:
    """``body`` sealed under ``key``; ``header`` (no newline in it) is kept readable."""
    head = orjson.dumps({**header, "k": str(key.id)})
    nonce = os.urandom(_NONCE_BYTES)
    ad = place(tenant_id, session_id) + _AD_PART + head
    return MARK + head + b"\n" + nonce + key.aead.encrypt(nonce, body, ad)


def parse(body: bytes) -> SealedEvent | None:
    """The parts of a sealed ``body``; ``None`` if it is not one."""
    if not is_sealed(body):
        return None
    head, sep, sealed = body[1:].partition(b"\n")
    if not sep or len(sealed) < _NONCE_BYTES + 16:
        return None
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(header, dict) or not isinstance(header.get("k"), str):
        return None
    return SealedEvent(header, head, sealed)


def open_event(key: DataKey, tenant_id: uuid.UUID, session_id: uuid.UUID,
               event: SealedEvent) -> bytes:
    """The plain body of ``event``; :class:`Unreadable` if it does not open here."""
    ad = place(tenant_id, session_id) + _AD_PART + event.head
    try:
        return key.aead.decrypt(event.sealed[:_NONCE_BYTES], event.sealed[_NONCE_BYTES:], ad)
    except InvalidTag:
        raise Unreadable("sealed event does not open under its key and place") from None
