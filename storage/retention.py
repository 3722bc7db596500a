"""Retention: archive what is older than a tenant's retention to the object store, then
delete it; erase temporary chats whose ``expires_at`` has passed.

Archives are gzipped JSON Lines under ``archives/{tenant}/{user}/{date}/{id}.jsonl.gz``
(``{user}`` is a hash of the user id), one line per message (``"kind": "message"``,
the API's message object plus ``user_id``) or per session removed because nothing of
it is left (``"kind": "session"``). Keeping each user's archives under one prefix lets
a right-to-erasure request delete them too (:func:`user_prefix`).

A batch is one transaction: lock the sessions (in id order, like every writer), then
their old messages; write the archives; delete; commit. An archive is written before
the commit, so a failed commit leaves an archive of rows that still exist and the next
run archives them again: a row can be archived twice, never lost. Streaming messages
are never archived. Attachments of archived messages are deleted, files too (their
keys are returned for the caller to delete after the commit); files are not archived.

An encrypted tenant's archive is a sealed file (``storage.crypto.files``) under the
user's data key, named ``….jsonl.gz.sealed``: its rows were sealed already, and sealing
the whole file hides the rest (user ids, session metadata, usage) as well, in any
object store. It opens while the user's data key exists; their erasure shreds it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import uuid
from collections import defaultdict
from typing import Any

import asyncpg
import orjson

from chat_storage.storage import jsoncodec, messages, sessions
from chat_storage.storage.audit_log import audit
from chat_storage.storage.crypto.envelope import Unreadable
from chat_storage.storage.crypto.files import open_bytes, parse_header, seal_bytes
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.rows import archived
from chat_storage.storage.crypto.switch import EncryptionNotConfigured
from chat_storage.storage.crypto.titles import archived_session
from chat_storage.storage.ids import new_id
from chat_storage.storage.objects import ObjectStore

ARCHIVES = "archives"
SEALED_SUFFIX = ".sealed"  # an encrypted tenant's archive: a sealed file
ACTOR = "retention"


def tenant_prefix(tenant_id: uuid.UUID) -> str:
    """Where the archives of a tenant are kept."""
    return f"{ARCHIVES}/{tenant_id}/"


def user_prefix(tenant_id: uuid.UUID, user_id: str) -> str:
    """Where the archives of one user of a tenant are kept."""
    return f"{tenant_prefix(tenant_id)}{hashlib.sha256(user_id.encode()).hexdigest()[:32]}/"


@dataclasses.dataclass(slots=True)
class BatchReport:
    """What one batch did."""

    messages: int = 0
    sessions: int = 0
    archives: list[str] = dataclasses.field(default_factory=list)
    object_keys: list[str] = dataclasses.field(default_factory=list)  # to delete after commit
    # sessions erased whole (tenant, session): their live-event logs go too
    erased: list[tuple[uuid.UUID, uuid.UUID]] = dataclasses.field(default_factory=list)


async def tenants_with_retention(conn: asyncpg.Connection) -> list[tuple[uuid.UUID, int]]:
    """``(tenant_id, retention_days)`` of every tenant that has a retention."""
    rows = await conn.fetch(
        "SELECT id, retention_days FROM tenants WHERE retention_days IS NOT NULL ORDER BY id")
    return [(r["id"], r["retention_days"]) for r in rows]


def _line(kind: str, user_id: str, obj: dict[str, Any]) -> bytes:
    return jsoncodec.dumps({"kind": kind, "user_id": user_id, **obj}) + b"\n"


async def archive_batch(
    conn: asyncpg.Connection, store: ObjectStore, tenant_id: uuid.UUID, cutoff: dt.datetime,
    *, limit: int = 2000, keyring: Keyring | None = None,
) -> BatchReport:
    """Archive and delete up to ``limit`` of the tenant's messages created before
    ``cutoff``, and the sessions last active before it that are left empty.

    An encrypted tenant's archives are sealed with ``keyring``; without one they are
    refused (:class:`EncryptionNotConfigured`) rather than written in the clear."""
    out = BatchReport()
    encrypted = bool(await conn.fetchval("SELECT encrypted FROM tenants WHERE id = $1",
                                         tenant_id))
    if encrypted and keyring is None:
        raise EncryptionNotConfigured(
            "the tenant has encryption on and CHAT_ENCRYPTION_KEK is not set: "
            "its archives would be stored in plain text")
    async with conn.transaction():
        ids = [r["id"] for r in await conn.fetch(
            """
            SELECT DISTINCT session_id AS id FROM (
                SELECT session_id FROM messages WHERE tenant_id = $1 AND created_at < $2
                    AND status <> 'streaming' ORDER BY created_at LIMIT $3) AS old
            UNION
            SELECT id FROM (SELECT id FROM sessions s WHERE tenant_id = $1 AND activity_at < $2
                AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id)
                LIMIT $3) AS empty
            """, tenant_id, cutoff, limit)]
        if not ids:
            return out
        owners = {r["id"]: r["user_id"] for r in await conn.fetch(
            "SELECT id, user_id FROM sessions WHERE tenant_id = $1 AND id = ANY($2::uuid[]) "
            "ORDER BY id FOR NO KEY UPDATE", tenant_id, ids)}
        rows = await conn.fetch(
            f"SELECT {messages.COLUMNS} FROM messages WHERE tenant_id = $1 "
            "AND session_id = ANY($2::uuid[]) AND created_at < $3 AND status <> 'streaming' "
            "ORDER BY session_id, seq LIMIT $4 FOR UPDATE",
            tenant_id, list(owners), cutoff, limit)
        lines: dict[str, list[bytes]] = defaultdict(list)
        for r in rows:
            user = owners[r["session_id"]]
            # a sealed message is archived sealed (its ciphertext, base64): the archive
            # opens only while the user's data key exists
            lines[user].append(_line("message", user, archived(messages.to_json(r))))
        message_ids = [r["id"] for r in rows]
        if message_ids:
            out.object_keys += [r["object_key"] for r in await conn.fetch(
                "DELETE FROM attachments WHERE tenant_id = $1 AND message_id = ANY($2::uuid[]) "
                "RETURNING object_key", tenant_id, message_ids)]
            await conn.execute(
                """
                WITH gone AS (DELETE FROM messages WHERE tenant_id = $1 AND id = ANY($2::uuid[])
                              RETURNING session_id, status)
                UPDATE sessions s SET message_count = s.message_count - g.n, updated_at = now()
                FROM (SELECT session_id, count(*) FILTER (WHERE status <> 'deleted') AS n
                      FROM gone GROUP BY session_id) g
                WHERE s.id = g.session_id AND s.tenant_id = $1
                """, tenant_id, message_ids)
        emptied = await conn.fetch(
            f"SELECT {sessions.COLUMNS} FROM sessions s WHERE tenant_id = $1 "
            "AND id = ANY($2::uuid[]) AND activity_at < $3 "
            "AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id)",
            tenant_id, list(owners), cutoff)
        for r in emptied:
            line = _line("session", r["user_id"], archived_session(sessions.to_json(r)))
            lines[r["user_id"]].append(line)
        if emptied:
            gone = [r["id"] for r in emptied]
            out.object_keys += [r["object_key"] for r in await conn.fetch(
                "SELECT object_key FROM attachments WHERE tenant_id = $1 "
                "AND session_id = ANY($2::uuid[])", tenant_id, gone)]
            await conn.execute("DELETE FROM sessions WHERE tenant_id = $1 AND id = ANY($2::uuid[])",
                               tenant_id, gone)
        day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        for user, chunk in lines.items():
            key = f"{user_prefix(tenant_id, user)}{day}/{new_id()}.jsonl.gz"
            data, mime = gzip.compress(b"".join(chunk)), "application/gzip"
            if keyring is not None and encrypted:
                key += SEALED_SUFFIX
                data_key = await keyring.for_user(conn, tenant_id, user)
                data = seal_bytes(data_key, tenant_id, key, data, hashlib.sha256(data).hexdigest())
                mime = "application/octet-stream"
            await store.put(key, data, mime)
            out.archives.append(key)
        out.messages, out.sessions = len(rows), len(emptied)
        await audit(conn, tenant_id, ACTOR, "retention.archive", None, {
            "messages": out.messages, "sessions": out.sessions, "archives": out.archives,
            "cutoff": cutoff.isoformat()})
    return out


async def erase_expired(conn: asyncpg.Connection, *, limit: int = 500) -> BatchReport:
    """Erase up to ``limit`` temporary chats (``expires_at`` passed), with no archive."""
    out = BatchReport()
    async with conn.transaction():
        rows = await conn.fetch(
            "SELECT tenant_id, id FROM sessions WHERE expires_at < now() "
            "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
        by_tenant: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        for r in rows:
            by_tenant[r["tenant_id"]].append(r["id"])
        for tenant_id, ids in by_tenant.items():
            erased = await sessions.erase_ids(conn, tenant_id, ids)
            await audit(conn, tenant_id, ACTOR, "session.expire", None,
                        {"sessions": [str(i) for i in ids], "messages": erased.messages})
            out.sessions += erased.sessions
            out.messages += erased.messages
            out.object_keys += erased.object_keys
            out.erased += [(tenant_id, s) for s in erased.session_ids]
    return out


async def read_archive(store: ObjectStore, key: str, *, conn: asyncpg.Connection | None = None,
                       keyring: Keyring | None = None) -> list[dict[str, Any]]:
    """The lines of one archive (for operators and tests); a sealed one needs ``conn``
    and ``keyring`` (:class:`Unreadable` without them, or once its key is shredded)."""
    data = b"".join([chunk async for chunk in store.read(key)])
    header = parse_header(data)
    if header is not None:
        tenant_id = uuid.UUID(key.split("/")[1])
        if conn is None or keyring is None:
            raise Unreadable("a sealed archive, and no key to open it")
        data_key = (await keyring.by_ids(conn, {header.data_key_id})).get(header.data_key_id)
        if data_key is None:
            raise Unreadable("the data key of this archive was destroyed")
        data = open_bytes(header, data_key, tenant_id, key, data)
    return [orjson.loads(line) for line in gzip.decompress(data).splitlines()]

