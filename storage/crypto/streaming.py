"""A sealed message being streamed: its checkpoints, its end and a sweeper's recovery.

A plain row appends each checkpoint's tail in SQL (``content || tail``); a sealed row
cannot, so each of these opens the row's sealed fields, changes them and seals them
again (one more read per checkpoint, i.e. per ``CHAT_CHECKPOINT_INTERVAL_S``). Each
update is conditional on the sealed value read: a concurrent change makes it miss
rather than overwrite, as the plain path's ``char_length`` check does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg

from chat_storage.storage.crypto.envelope import Unreadable, associated, open_sealed, seal
from chat_storage.storage.crypto.keyring import Keyring

Change = Callable[[dict[str, Any]], dict[str, Any] | None]


async def reseal(
    conn: asyncpg.Connection, keyring: Keyring, tenant_id: uuid.UUID, message_id: uuid.UUID,
    *, session_id: uuid.UUID | None = None, status: str, change: Change, sets: str = "",
    args: tuple[Any, ...] = (), returning: str = "true",
) -> asyncpg.Record | None:
    """Apply ``change`` to the sealed fields of a message in ``status``; ``None`` if it is
    not (any more) in that status, not sealed, or ``change`` declines (returns None).

    ``sets``: more ``column = $n`` assignments (``$5`` on), with ``args``.
    """
    row = await conn.fetchrow(
        "SELECT session_id, sealed, data_key_id FROM messages "
        "WHERE id = $1 AND tenant_id = $2 AND status = $3 AND sealed IS NOT NULL "
        "AND ($4::uuid IS NULL OR session_id = $4)",
        message_id, tenant_id, status, session_id)
    if row is None:
        return None
    keys = await keyring.by_ids(conn, {row["data_key_id"]})
    key = keys.get(row["data_key_id"])
    if key is None:
        raise Unreadable("the data key of this content was destroyed")
    ad = associated(tenant_id, row["session_id"], message_id)
    fields = change(open_sealed(key.aead, bytes(row["sealed"]), ad))
    if fields is None:
        return None
    extra = f", {sets}" if sets else ""
    result: asyncpg.Record | None = await conn.fetchrow(
        f"UPDATE messages SET sealed = $4{extra} "
        "WHERE id = $1 AND tenant_id = $2 AND sealed = $3 "
        f"RETURNING {returning}",
        message_id, tenant_id, row["sealed"], seal(key.aead, fields, ad), *args)
    return result


def with_content(content: str) -> Change:
    """A change that sets the content."""
    def change(fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "content": content}
    return change


def finished(content: str, metadata: Mapping[str, Any] | None,
             tool_calls: Sequence[Mapping[str, Any]] | None = None) -> Change:
    """A stream's end: the whole content, ``metadata`` merged into what it had, and its
    ``tool_calls`` when given (sealed with the content, as a create seals them)."""
    def change(fields: dict[str, Any]) -> dict[str, Any]:
        out = {**fields, "content": content,
               "metadata": {**(fields.get("metadata") or {}), **(metadata or {})}}
        if tool_calls is not None:
            out["tool_calls"] = [dict(c) for c in tool_calls]
        return out
    return change


def appended(stored_len: int, tail: str) -> Change:
    """``tail`` appended to content that is ``stored_len`` long (else: declined)."""
    def change(fields: dict[str, Any]) -> dict[str, Any] | None:
        if len(fields["content"]) != stored_len:
            return None
        return {**fields, "content": fields["content"] + tail}
    return change
