"""Session titles of encrypted tenants: sealed under the user's data key.

A sealed session keeps its title in ``sessions.sealed_title`` (bound to its tenant and
session) and ``''`` in ``title``. Session objects carry ``sealed_title`` and
``data_key_id`` until :func:`open_sessions` replaces them with the title.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from chat_storage.storage.crypto.envelope import Unreadable, associated, open_sealed, seal
from chat_storage.storage.crypto.keyring import DataKey, Keyring

TITLE = "title"  # the row part of a title's associated data


def seal_title(key: DataKey, tenant_id: uuid.UUID, session_id: uuid.UUID, title: str) -> bytes:
    """The sealed form of a session's title."""
    return seal(key.aead, {"title": title}, associated(tenant_id, session_id, TITLE))


async def open_sessions(
    conn: asyncpg.Connection, keyring: Keyring | None, tenant_id: uuid.UUID,
    found: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """``found`` session objects with their titles opened (the extra keys dropped);
    :class:`Unreadable` for one whose key is gone or that was moved."""
    wanted = {s["data_key_id"] for s in found if s.get("sealed_title") is not None}
    keys: dict[uuid.UUID, DataKey] = {}
    if wanted:
        if keyring is None:
            raise Unreadable("sealed title, and no CHAT_ENCRYPTION_KEK to open it")
        keys = await keyring.by_ids(conn, wanted)
    out = []
    for session in found:
        sealed = session.pop("sealed_title", None)
        key_id = session.pop("data_key_id", None)
        if sealed is not None:
            key = keys.get(key_id)
            if key is None:
                raise Unreadable("the data key of this title was destroyed")
            session["title"] = open_sealed(key.aead, bytes(sealed), associated(
                tenant_id, session["id"], TITLE))["title"]
        out.append(session)
    return out


def archived_session(session: dict[str, Any]) -> dict[str, Any]:
    """A session as an archive line holds it: a sealed title stays sealed (base64)."""
    if session.get("sealed_title") is None:
        return session
    return {**session, "sealed_title": base64.b64encode(bytes(session["sealed_title"])).decode(),
            "data_key_id": str(session["data_key_id"])}
