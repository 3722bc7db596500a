"""Sealing and opening message rows: the fields encryption covers, in one place.

A sealed message row keeps ``content``, ``context`` and ``metadata`` (and its
``tool_calls`` and ``tool_call_id`` when it has them) in its ``sealed`` column and
``''`` / ``NULL`` / ``{}`` / ``NULL`` in the plain ones. Reads turn a row
into the API's message object here, before either JSON path encodes it, so every
reader (history, one message, exports, search's caller) opens the same way.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from chat_storage.storage.crypto.envelope import (
    Unreadable,
    associated,
    open_sealed,
    place,
    row_part,
    seal,
)
from chat_storage.storage.crypto.keyring import DataKey, Keyring

SEALED_FIELDS = ("content", "context", "metadata")
# sealed only when set (most messages have none, and rows sealed before tool calls
# existed open without them): a tool call's name and arguments are conversation content
SEALED_IF_SET = ("tool_calls", "tool_call_id")
# what the plain columns of a sealed row hold
PLAIN_OF_SEALED: dict[str, Any] = {"content": "", "context": None, "metadata": {},
                                   "tool_calls": None, "tool_call_id": None}


def seal_message(key: DataKey, tenant_id: uuid.UUID, session_id: uuid.UUID,
                 message_id: uuid.UUID, fields: Mapping[str, Any]) -> bytes:
    """The sealed form of a message's ``content``, ``context``, ``metadata`` and, when
    it has them, ``tool_calls`` and ``tool_call_id``."""
    sealed = {f: fields[f] for f in SEALED_FIELDS}
    sealed.update({f: fields[f] for f in SEALED_IF_SET if fields.get(f) is not None})
    return seal(key.aead, sealed, associated(tenant_id, session_id, message_id))


def archived(message: dict[str, Any]) -> dict[str, Any]:
    """A message as an archive line holds it: a sealed one keeps its ciphertext (base64)
    and its key's id, nothing in plain text; :func:`from_archive` reverses it."""
    if message.get("sealed") is None:
        return message
    return {**message, "sealed": base64.b64encode(bytes(message["sealed"])).decode(),
            "data_key_id": str(message["data_key_id"])}


def from_archive(line: Mapping[str, Any]) -> dict[str, Any]:
    """An archived message, ready for :func:`open_messages` (ids as UUIDs again)."""
    message = dict(line)
    for field in ("id", "session_id"):
        message[field] = uuid.UUID(str(message[field]))
    if message.get("sealed") is not None:
        message["sealed"] = base64.b64decode(message["sealed"])
        message["data_key_id"] = uuid.UUID(message["data_key_id"])
    return message


async def open_messages(
    conn: asyncpg.Connection, keyring: Keyring | None, tenant_id: uuid.UUID,
    rows: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """``rows`` (message objects; a sealed one carries ``sealed`` and ``data_key_id``)
    with their sealed fields opened. A plain row is passed through as it is; a sealed
    one is copied, opened, and loses those two keys. :class:`Unreadable` for a row whose
    key is gone (shredded) or that was moved from another row, tenant or session."""
    wanted = {r["data_key_id"] for r in rows if r.get("sealed") is not None}
    if not wanted:  # a plain tenant's page costs one scan, no copy
        return list(rows)
    if keyring is None:
        raise Unreadable("sealed content, and no CHAT_ENCRYPTION_KEK to open it")
    keys = await keyring.by_ids(conn, wanted)
    places: dict[uuid.UUID, bytes] = {}  # a page is mostly one session: its part once
    out = []
    for row in rows:
        sealed = row.get("sealed")
        if sealed is None:
            out.append(row)
            continue
        key = keys.get(row["data_key_id"])
        if key is None:
            raise Unreadable("the data key of this content was destroyed")
        message = dict(row)
        del message["sealed"], message["data_key_id"]
        session_id = row["session_id"]
        prefix = places.get(session_id)
        if prefix is None:
            prefix = places[session_id] = place(tenant_id, session_id)
        message.update(open_sealed(key.aead, bytes(sealed), prefix + row_part(row["id"])))
        out.append(message)
    return out
