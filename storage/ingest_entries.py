"""What an async-ingest entry holds: one request's messages, plain or sealed.

The payload of an entry of the ingest stream (``storage.ingest``) is JSON, version 1
plain; an encrypted tenant's is version 2, its messages sealed under the session's
user's data key (``storage.crypto.ingest``). :func:`delivery` decodes what the stream
returns; a sealed entry is opened by the consumer, which has the keys (:func:`opened`).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from chat_storage.storage.crypto import ingest as sealed_ingest
from chat_storage.storage.crypto.envelope import Unreadable
from chat_storage.storage.crypto.keyring import DataKey
from chat_storage.storage.messages import NewMessage

DATA_FIELD = b"d"
FORMAT_VERSION = 1
SEALED_START = b'{"v":2,'  # how orjson writes a sealed payload (storage.crypto.ingest)
Fields = dict[bytes, bytes]


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One accepted request: a group of messages for one session of one tenant."""

    tenant_id: uuid.UUID
    session_id: uuid.UUID
    messages: Sequence[NewMessage]
    wrap: bool = False  # a batch request (the answer would be ``{"data": [...]}``)
    # the accepting request's trace context as W3C headers (``traceparent``): the
    # consumer's span continues that trace. Empty when tracing is off.
    trace: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """An entry as read from the stream: its stream id, raw fields and decoded entry.

    ``entry`` is ``None`` when the fields cannot be decoded (``error`` says why), or
    are sealed (``key_id``) and not opened yet (:func:`opened`).
    """

    id: str
    fields: Fields
    entry: Entry | None
    error: str | None = None
    key_id: uuid.UUID | None = None  # sealed: the consumer opens it with this data key


def encode(entry: Entry, key: DataKey | None = None) -> bytes:
    """The stream payload of ``entry``; with ``key`` (an encrypted tenant's session),
    its messages sealed (``storage.crypto.ingest``)."""
    payload = _plain(entry)
    if key is not None:
        payload = sealed_ingest.seal_messages(key, entry.tenant_id, entry.session_id, payload)
    return orjson.dumps(payload)


def _plain(entry: Entry) -> dict[str, Any]:
    return {
        "v": FORMAT_VERSION, "t": str(entry.tenant_id), "s": str(entry.session_id),
        "w": entry.wrap, **({"c": dict(entry.trace)} if entry.trace else {}),
        "m": [{"id": str(m.id), "role": m.role, "content": m.content,
               "sender_id": m.sender_id,
               "parent_id": None if m.parent_id is None else str(m.parent_id),
               "context": m.context, "metadata": m.metadata, "usage": m.usage,
               "a": [str(a) for a in m.attachment_ids],
               # only when set: an entry stays readable by a release without tool calls
               **({"tc": m.tool_calls} if m.tool_calls is not None else {}),
               **({"tci": m.tool_call_id} if m.tool_call_id is not None else {})}
              for m in entry.messages],
    }


def decode(payload: bytes, key: DataKey | None = None) -> Entry:
    """The entry in ``payload`` (sealed: opened with ``key``); :class:`ValueError` if it
    is not one of ours, ``Unreadable`` if it does not open."""
    try:
        data = orjson.loads(payload)
        if key is not None and isinstance(data, dict):
            data = sealed_ingest.open_messages(key, data)
        if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION:
            raise ValueError("unknown entry format")
        raw = data["m"]
        if not isinstance(raw, list) or not raw:
            raise ValueError("an entry needs at least one message")
        messages = [
            NewMessage(
                id=uuid.UUID(m["id"]), role=str(m["role"]), content=str(m["content"]),
                sender_id=m["sender_id"],
                parent_id=None if m["parent_id"] is None else uuid.UUID(m["parent_id"]),
                context=m["context"], metadata=dict(m["metadata"]), usage=m["usage"],
                attachment_ids=tuple(uuid.UUID(a) for a in m.get("a", ())),
                tool_calls=m.get("tc"), tool_call_id=m.get("tci"),
            )
            for m in raw
        ]
        carrier = data.get("c")
        trace = ({str(k): str(v) for k, v in carrier.items()}
                 if isinstance(carrier, dict) else {})
        return Entry(uuid.UUID(data["t"]), uuid.UUID(data["s"]), messages, bool(data["w"]),
                     trace)
    except (KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"malformed entry: {exc!r}") from None


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def delivery(entry_id: bytes | str, fields: Fields) -> Delivery:
    try:
        payload = fields[DATA_FIELD]
        if payload.startswith(SEALED_START):  # opened by the consumer, which has the keys
            key_id = sealed_ingest.key_of(orjson.loads(payload))
            if key_id is not None:
                return Delivery(text(entry_id), fields, None, key_id=key_id)
        return Delivery(text(entry_id), fields, decode(payload))
    except (KeyError, ValueError, TypeError, orjson.JSONDecodeError) as exc:
        return Delivery(text(entry_id), fields, None, str(exc) or "no payload")


def opened(delivery: Delivery, key: DataKey | None) -> Delivery:
    """A sealed ``delivery`` opened with ``key``; an error (dead-lettered) if its key is
    gone (``None``: the user was erased) or it does not open."""
    if key is None:
        return dataclasses.replace(delivery, key_id=None, error="unreadable: its key is gone")
    try:
        entry = decode(delivery.fields[DATA_FIELD], key)
    except (ValueError, Unreadable) as exc:
        return dataclasses.replace(delivery, key_id=None, error=f"unreadable: {exc}")
    return dataclasses.replace(delivery, entry=entry, key_id=None)
