"""Signing keys, their seal, and the tickets user tokens ask for, against real Postgres."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from chat_storage.storage import sessions, signing_keys, tickets
from chat_storage.storage.errors import NotFound
from chat_storage.storage.principal import user_principal
from chat_storage.storage.sealing import Sealer, SealError
from tests.conftest import TEST_SECRET_KEY, Tenant

SEALER = Sealer(TEST_SECRET_KEY.encode())


def test_a_sealed_value_opens_only_in_its_own_context_and_under_its_secret() -> None:
    sealed = SEALER.seal(b"k" * 32, b"csk_a/tenant-1")
    assert SEALER.open(sealed, b"csk_a/tenant-1") == b"k" * 32
    with pytest.raises(SealError):
        SEALER.open(sealed, b"csk_a/tenant-2")  # copied into another tenant's row
    with pytest.raises(SealError):
        Sealer(b"another-secret-" + b"x" * 32).open(sealed, b"csk_a/tenant-1")


async def test_a_ticket_of_a_user_is_only_for_that_users_session(
        pool: asyncpg.Pool, tenant: Tenant) -> None:
    async with pool.acquire() as conn:
        key = await signing_keys.active_key(conn, tenant.id, SEALER)
        bobs = (await sessions.create(conn, tenant.id, user_id="bob"))["id"]
        alice = user_principal(tenant.id, tenant.name, "alice", frozenset({"stream"}),
                               credential_id=f"token:{key.kid}")
        with pytest.raises(NotFound):
            await tickets.create(conn, alice, bobs)


async def test_a_users_ticket_dies_with_its_tokens_signing_key(
        pool: asyncpg.Pool, tenant: Tenant) -> None:
    async with pool.acquire() as conn:
        key = await signing_keys.active_key(conn, tenant.id, SEALER)
        own = uuid.UUID(str((await sessions.create(conn, tenant.id, user_id="alice"))["id"]))
        alice = user_principal(tenant.id, tenant.name, "alice", frozenset({"stream"}),
                               credential_id=f"token:{key.kid}")
        used, _ = await tickets.create(conn, alice, own)
        kept, _ = await tickets.create(conn, alice, own)
        principal = await tickets.consume(conn, used, own)
        assert principal is not None and principal.user_id == "alice"
        assert principal.session_ids == frozenset({own})
        assert await signing_keys.rotate(conn, tenant.name) == key.kid
        assert await tickets.consume(conn, kept, own) is None
