"""Data keys: one per (tenant, user), made on first use, wrapped by the KEK at rest.

Opened keys are kept in memory for ``cache_s`` (bounded in count), so a write or a
read pays the KEK (a KMS round trip) once per key and window, not per message. A
shredded key (its row deleted with the user's erasure) opens nothing afterwards on
any replica once the cache entry expires; the rows it sealed were deleted in the same
transaction, and copies of them (backups, archives) no longer open.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
import uuid
from collections import OrderedDict
from typing import TypeVar

import asyncpg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chat_storage.storage.crypto.kek import Kek, KekError
from chat_storage.storage.errors import NotFound
from chat_storage.storage.ids import new_id

MAX_CACHED = 10_000
K = TypeVar("K")
V = TypeVar("V")


@dataclasses.dataclass(frozen=True, slots=True)
class DataKey:
    """An opened data key: its id (stored beside what it seals) and its cipher."""

    id: uuid.UUID
    aead: AESGCM


def _context(tenant_id: uuid.UUID, user_id: str) -> dict[str, str]:
    return {"tenant": str(tenant_id), "user": user_id, "purpose": "chat-storage/data-key"}


class Keyring:
    """Makes, opens and caches data keys under one KEK."""

    def __init__(self, kek: Kek, *, cache_s: float = 60.0) -> None:
        self.kek = kek
        self._cache_s = cache_s
        self._keys: OrderedDict[uuid.UUID, tuple[float, DataKey]] = OrderedDict()
        # session -> its user's key (None: the tenant is not encrypted), for writes
        self._sessions: OrderedDict[uuid.UUID, tuple[float, DataKey | None]] = OrderedDict()

    async def close(self) -> None:
        """Forget every opened key and release the KEK's client."""
        self._keys.clear()
        self._sessions.clear()
        await self.kek.close()

    def _remember(self, cache: OrderedDict[K, tuple[float, V]], key: K, value: V) -> None:
        cache[key] = (time.monotonic() + self._cache_s, value)
        cache.move_to_end(key)
        while len(cache) > MAX_CACHED:
            cache.popitem(last=False)

    @staticmethod
    def _fresh(cache: OrderedDict[K, tuple[float, V]], key: K) -> tuple[float, V] | None:
        """The entry of ``key`` if it has not expired."""
        hit = cache.get(key)
        return None if hit is None or hit[0] < time.monotonic() else hit

    def cached(self, key_id: uuid.UUID) -> DataKey | None:
        """The opened key ``key_id`` if this process holds it now (no I/O)."""
        hit = self._fresh(self._keys, key_id)
        return None if hit is None else hit[1]

    def cached_session(self, session_id: uuid.UUID) -> tuple[bool, DataKey | None]:
        """``(known, key)``: what :meth:`for_session` would answer without I/O, if it can."""
        hit = self._fresh(self._sessions, session_id)
        return (False, None) if hit is None else (True, hit[1])

    async def for_session(self, conn: asyncpg.Connection, tenant_id: uuid.UUID,
                          session_id: uuid.UUID) -> DataKey | None:
        """The key that seals new content of a session; ``None``: its tenant is not
        encrypted (or there is no such session: the write will say so)."""
        hit = self._fresh(self._sessions, session_id)
        if hit is not None:
            return hit[1]
        row = await conn.fetchrow(
            "SELECT s.user_id, t.encrypted FROM sessions s JOIN tenants t ON t.id = s.tenant_id "
            "WHERE s.id = $1 AND s.tenant_id = $2", session_id, tenant_id)
        key = None
        if row is not None and row["encrypted"]:
            key = await self.for_user(conn, tenant_id, row["user_id"])
        if row is not None:
            self._remember(self._sessions, session_id, key)
        return key

    async def for_copies(self, conn: asyncpg.Connection, tenant_id: uuid.UUID,
                         session_id: uuid.UUID) -> DataKey | None:
        """The key that seals copies of a session's content kept elsewhere (Redis: live
        events, queued writes); ``None``: its tenant is not encrypted.

        :class:`NotFound` if the tenant is encrypted and the session does not exist:
        there is no user's key to seal with, and a copy must not go plain.
        """
        key = await self.for_session(conn, tenant_id, session_id)
        if key is None and not self.cached_session(session_id)[0] and await conn.fetchval(
                "SELECT encrypted FROM tenants WHERE id = $1", tenant_id):
            raise NotFound("session not found")
        return key

    async def for_new_session(self, conn: asyncpg.Connection, tenant_id: uuid.UUID,
                              user_id: str) -> DataKey | None:
        """The key that seals a new session's title; ``None``: the tenant is not encrypted."""
        if not await conn.fetchval("SELECT encrypted FROM tenants WHERE id = $1", tenant_id):
            return None
        return await self.for_user(conn, tenant_id, user_id)

    async def for_user(self, conn: asyncpg.Connection, tenant_id: uuid.UUID,
                       user_id: str) -> DataKey:
        """The user's data key, made now if they have none (a racing replica's wins)."""
        row = await conn.fetchrow(
            "SELECT id, wrapped FROM data_keys WHERE tenant_id = $1 AND user_id = $2",
            tenant_id, user_id)
        if row is None:
            secret = secrets.token_bytes(32)
            wrapped = await self.kek.wrap(secret, _context(tenant_id, user_id))
            await conn.execute(
                "INSERT INTO data_keys (id, tenant_id, user_id, wrapped, kek_id) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, user_id) DO NOTHING",
                new_id(), tenant_id, user_id, wrapped, self.kek.id)
            row = await conn.fetchrow(
                "SELECT id, wrapped FROM data_keys WHERE tenant_id = $1 AND user_id = $2",
                tenant_id, user_id)
            if row is None:  # erased between the two statements
                raise KekError("the user's data key was destroyed meanwhile")
        cached = self._fresh(self._keys, row["id"])
        if cached is not None:
            return cached[1]
        opened = DataKey(row["id"], AESGCM(await self.kek.unwrap(
            bytes(row["wrapped"]), _context(tenant_id, user_id))))
        self._remember(self._keys, opened.id, opened)
        return opened

    async def by_ids(self, conn: asyncpg.Connection,
                     ids: set[uuid.UUID]) -> dict[uuid.UUID, DataKey]:
        """The keys ``ids`` that still exist, opened; a shredded one is left out."""
        out: dict[uuid.UUID, DataKey] = {}
        missing = []
        for key_id in ids:
            cached = self._fresh(self._keys, key_id)
            if cached is not None:
                out[key_id] = cached[1]
            else:
                missing.append(key_id)
        if missing:
            rows = await conn.fetch(
                "SELECT id, tenant_id, user_id, wrapped FROM data_keys "
                "WHERE id = ANY($1::uuid[])", missing)
            for row in rows:
                key = DataKey(row["id"], AESGCM(await self.kek.unwrap(
                    bytes(row["wrapped"]), _context(row["tenant_id"], row["user_id"]))))
                self._remember(self._keys, key.id, key)
                out[key.id] = key
        return out


async def shred(conn: asyncpg.Connection, tenant_id: uuid.UUID, user_id: str) -> set[uuid.UUID]:
    """Destroy the user's data key (in the caller's transaction); the ids destroyed."""
    rows = await conn.fetch(
        "DELETE FROM data_keys WHERE tenant_id = $1 AND user_id = $2 RETURNING id",
        tenant_id, user_id)
    return {r["id"] for r in rows}


async def rewrap(conn: asyncpg.Connection, old: Kek, new: Kek, *, batch: int = 500) -> int:
    """Re-wrap every data key wrapped by ``old`` under ``new``; no content row is touched.

    Each batch commits on its own, so a stopped run resumes where it stopped; keys
    made meanwhile by servers already on ``new`` are under it already. Returns how many
    keys were re-wrapped.
    """
    done = 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(
                "SELECT id, tenant_id, user_id, wrapped FROM data_keys WHERE kek_id = $1 "
                "ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED", old.id, batch)
            if not rows:
                return done
            for row in rows:
                context = _context(row["tenant_id"], row["user_id"])
                secret = await old.unwrap(bytes(row["wrapped"]), context)
                await conn.execute(
                    "UPDATE data_keys SET wrapped = $2, kek_id = $3, wrapped_at = now() "
                    "WHERE id = $1", row["id"], await new.wrap(secret, context), new.id)
            done += len(rows)


async def keys_not_under(conn: asyncpg.Connection, kek: Kek) -> int:
    """How many data keys some other KEK wraps (after a rotation: 0, or a KEK forgotten)."""
    left: int = await conn.fetchval("SELECT count(*) FROM data_keys WHERE kek_id <> $1", kek.id)
    return left
