"""Idempotency keys: claim before the work, answer in the work's own transaction.

A claim holds a lock (``locked_until``) while the first request runs, and names its ``holder``: the
process's liveness lock (:mod:`.liveness`). The response
is written by the same transaction that stores the work, so a crash can never leave
work stored without its recorded answer (a retry would store it twice) or an answer
without its work. A claim whose holder died can be taken over: at once when its
holder's liveness lock is free (the process is gone, ``kill -9`` included), else once
it expires (``LOCK_S``: a holder not known, or a live one that takes too long).

The response is kept as the JSON text the first request was answered with (a ``json``
column, which keeps text as written, not ``jsonb``, which reorders keys), and a replay
gets that text back unchanged: it is byte-identical to the first answer — until what
it holds is erased: each reply names its session (``session_id``), and deleting a
message rewrites the replies that hold it (:func:`forget_message`), deleting a session
drops its replies (:func:`forget_sessions`).
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import orjson

from chat_storage.storage.crypto.keyring import DataKey, Keyring
from chat_storage.storage.crypto.replies import open_reply, seal_reply
from chat_storage.storage.locks import HOLDER_LOCKS

LOCK_S = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """A held idempotency key: the work must record its response with it."""

    tenant_id: uuid.UUID
    key: str
    request_hash: bytes
    session_id: uuid.UUID | None = None  # the session the work is in, when the path names it


class ClaimStatus(enum.Enum):
    """What a claim of an Idempotency-Key found."""

    CLAIMED = "claimed"  # go ahead, then record_response in the work's transaction
    REPLAY = "replay"  # same key, same request, finished: replay the stored response
    MISMATCH = "mismatch"  # same key, another request: 422
    IN_FLIGHT = "in_flight"  # same key, first request still running: 409


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimResult:
    outcome: ClaimStatus
    claim: Claim | None = None
    status_code: int | None = None
    response: bytes | None = None  # REPLAY: the first answer's body, as sent


async def claim(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, key: str, request_hash: bytes,
    *, ttl_s: int, session_id: uuid.UUID | None = None, holder: int | None = None,
    keyring: Keyring | None = None,
) -> ClaimResult:
    """Claim ``key`` for a request whose hash is ``request_hash`` (on ``session_id``),
    held by ``holder`` (this process's liveness lock,
    :attr:`.liveness.Liveness.holder`); a replay's sealed reply (an encrypted tenant's)
    is opened with ``keyring``."""
    row = await conn.fetchrow(
        """
        INSERT INTO idempotency_keys AS k (tenant_id, key, request_hash, locked_until, holder)
        VALUES ($1, $2, $3, now() + make_interval(secs => $4), $6)
        ON CONFLICT (tenant_id, key) DO UPDATE
            SET request_hash = EXCLUDED.request_hash,
                locked_until = EXCLUDED.locked_until,
                holder = EXCLUDED.holder,
                created_at = now()
            -- take over an expired key, or a claim whose holder died before answering:
            -- its lock expired, or its process's liveness lock is free (the process is
            -- gone; the transaction's lock on it ends with this statement)
            WHERE k.created_at < now() - make_interval(secs => $5)
               OR (k.status_code IS NULL AND (k.locked_until < now() OR (
                   k.holder IS NOT NULL AND pg_try_advisory_xact_lock($7, k.holder))))
        RETURNING true
        """,
        tenant_id, key, request_hash, LOCK_S, float(ttl_s), holder, HOLDER_LOCKS,
    )
    if row is not None:
        return ClaimResult(ClaimStatus.CLAIMED, Claim(tenant_id, key, request_hash, session_id))
    existing = await conn.fetchrow(
        "SELECT request_hash, status_code, response::text AS response FROM idempotency_keys "
        "WHERE tenant_id = $1 AND key = $2",
        tenant_id, key,
    )
    if existing is None:  # deleted between the two statements: try once more
        return await claim(conn, tenant_id, key, request_hash, ttl_s=ttl_s,
                           session_id=session_id, holder=holder, keyring=keyring)
    if bytes(existing["request_hash"]) != request_hash:
        return ClaimResult(ClaimStatus.MISMATCH)
    if existing["status_code"] is None:
        return ClaimResult(ClaimStatus.IN_FLIGHT)
    return ClaimResult(ClaimStatus.REPLAY, None, existing["status_code"], await open_reply(
        conn, keyring, tenant_id, key, existing["response"].encode()))


async def record_response(
    conn: asyncpg.Connection, idem: Claim, status_code: int, response: Any,
    data_key: DataKey | None = None, *, session_id: uuid.UUID | None = None,
) -> None:
    """Store the answer to a claimed key; call inside the work's transaction.

    ``response`` is encoded as the API encodes bodies (``jsoncodec.dumps``), so the
    text stored is the body the client gets; with ``data_key`` (an encrypted tenant's
    writer's) it is stored sealed. ``session_id``: the session the answer is about, when
    the claim does not know it (a session just created).
    """
    if data_key is not None:
        response = seal_reply(data_key, idem.tenant_id, idem.key, response)
    await conn.execute(
        "UPDATE idempotency_keys SET status_code = $3, response = $4, locked_until = NULL, "
        "session_id = $5, holder = NULL WHERE tenant_id = $1 AND key = $2",
        idem.tenant_id, idem.key, status_code, response, session_id or idem.session_id,
    )


async def forget_sessions(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                          session_ids: Sequence[uuid.UUID]) -> None:
    """Drop the stored replies of ``session_ids`` (being deleted: a retry finds none)."""
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND session_id = ANY($2::uuid[])",
        tenant_id, list(session_ids))


async def forget_message(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                         session_id: uuid.UUID, tombstone: Mapping[str, Any]) -> None:
    """Put ``tombstone`` in place of its message in every reply of the session that holds it.

    The reply keeps its key (a retry still replays, and stores nothing twice) but no
    longer the content: it shows the message as deleted, as a read would.
    """
    needle = str(tombstone["id"])
    rows = await conn.fetch(
        "SELECT key, response::text AS response FROM idempotency_keys "
        "WHERE tenant_id = $1 AND session_id = $2 AND strpos(response::text, $3) > 0",
        tenant_id, session_id, needle)
    for row in rows:
        reply = _replace(orjson.loads(row["response"]), needle, tombstone)
        await conn.execute(
            "UPDATE idempotency_keys SET response = $3 WHERE tenant_id = $1 AND key = $2",
            tenant_id, row["key"], reply)


def _replace(value: Any, message_id: str, tombstone: Mapping[str, Any]) -> Any:
    """``value`` with each message object of ``message_id`` (one with content) replaced."""
    if isinstance(value, list):
        return [_replace(v, message_id, tombstone) for v in value]
    if isinstance(value, dict):
        if value.get("id") == message_id and "content" in value:
            return tombstone
        return {k: _replace(v, message_id, tombstone) for k, v in value.items()}
    return value


async def release(conn: asyncpg.Connection, idem: Claim) -> None:
    """Give up a claim whose work failed, so a retry can run at once."""
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 "
        "AND request_hash = $3 AND status_code IS NULL",
        idem.tenant_id, idem.key, idem.request_hash,
    )


async def purge_expired(conn: asyncpg.Connection, ttl_s: int, limit: int = 10_000) -> int:
    """Delete up to ``limit`` answered keys older than ``ttl_s``; return how many."""
    result: str = await conn.execute(
        """
        DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM idempotency_keys
            WHERE created_at < now() - make_interval(secs => $1) LIMIT $2))
        """,
        float(ttl_s), limit,
    )
    return int(result.split()[-1])
