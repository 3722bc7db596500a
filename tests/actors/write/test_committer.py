"""Lost connections during a commit: the outcome is learnt, never guessed.

A proxy in front of the real Postgres cuts the committing connection either after
the server ran the transaction (its answer is lost) or before the request reached
it. A write is answered as stored exactly when it is stored, and never stored twice.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from chat_storage.actors.write.committer import Lease
from chat_storage.actors.write.errors import OutcomeUnknown
from chat_storage.storage import writes
from chat_storage.storage.errors import Unavailable
from chat_storage.storage.writes import SessionBatch
from tests.actors.conftest import MakeRegistry, metric, msg, new_session, stored
from tests.conftest import Tenant
from tests.support.pgproxy import PgProxy


async def test_commit_whose_answer_was_lost_is_confirmed_not_repeated(
    make_registry: MakeRegistry, proxied_pool: asyncpg.Pool, pool: asyncpg.Pool,
    proxy: PgProxy, tenant: Tenant,
) -> None:
    registry = await make_registry(on=proxied_pool, committers=1)  # one warm connection
    sid = await new_session(pool, tenant)
    await registry.write(tenant.id, sid, msg("before"))
    proxy.cut_next("reply")
    [answer] = await registry.write(tenant.id, sid, msg("answer lost"))
    assert proxy.cut_done.is_set()  # the cut really happened
    rows = await stored(pool, sid)
    assert [(r["content"], r["seq"]) for r in rows] == [("before", 1), ("answer lost", 2)]
    assert answer["id"] == rows[1]["id"] and answer["seq"] == 2
    [after] = await registry.write(tenant.id, sid, msg("after"))
    assert after["seq"] == 3


async def test_request_that_never_arrived_is_retried_once_and_stored_once(
    make_registry: MakeRegistry, proxied_pool: asyncpg.Pool, pool: asyncpg.Pool,
    proxy: PgProxy, tenant: Tenant,
) -> None:
    registry = await make_registry(on=proxied_pool, committers=1)  # one warm connection
    sid = await new_session(pool, tenant)
    await registry.write(tenant.id, sid, msg("before"))
    proxy.cut_next("request")
    [answer] = await registry.write(tenant.id, sid, msg("request lost"))
    assert proxy.cut_done.is_set()
    rows = await stored(pool, sid)
    assert [(r["content"], r["seq"]) for r in rows] == [("before", 1), ("request lost", 2)]
    assert answer["id"] == rows[1]["id"]


async def test_unknown_outcome_is_never_answered_as_stored(
    make_registry: MakeRegistry, proxied_pool: asyncpg.Pool, pool: asyncpg.Pool,
    proxy: PgProxy, tenant: Tenant,
) -> None:
    registry = await make_registry(on=proxied_pool, committers=1, settle_timeout_s=0.5,
                                   acquire_timeout_s=0.2)
    sid = await new_session(pool, tenant)
    await registry.write(tenant.id, sid, msg("before"))
    unknown = metric("chat_writes_rejected_total", reason="outcome_unknown")
    proxy.cut_next("reply")
    proxy.refuse = True  # and the database stays unreachable
    with pytest.raises(OutcomeUnknown):
        await registry.write(tenant.id, sid, msg("in doubt"))
    assert metric("chat_writes_rejected_total", reason="outcome_unknown") - unknown == 1
    proxy.refuse = False
    # it did commit (only its answer was lost): stored once, and the session goes on
    # (the pool may first need a moment to connect again: a 503 stores nothing)
    after = None
    for _ in range(50):
        try:
            [after] = await registry.write(tenant.id, sid, msg("after"))
            break
        except Unavailable:
            await asyncio.sleep(0.1)
    assert after is not None
    rows = await stored(pool, sid)
    assert [r["content"] for r in rows] == ["before", "in doubt", "after"]
    assert after["seq"] == 3


async def test_settle_waits_for_the_open_transaction_to_end(
    pool: asyncpg.Pool, tenant: Tenant
) -> None:
    sid = await new_session(pool, tenant)
    batch = SessionBatch(tenant.id, sid, [msg("pending")])
    ids = [m.id for g in batch.groups for m in g.messages]
    for commit in (False, True):
        async with pool.acquire() as writer:
            tx = writer.transaction()
            await tx.start()
            await writes.insert_batches(writer, [batch])
            async with pool.acquire() as reader:
                settle = asyncio.create_task(writes.fetch_settled(
                    reader, [(tenant.id, sid)], ids, lock_timeout_s=10.0))
                await asyncio.sleep(0.2)
                assert not settle.done()  # the writer still holds the session's lock
                await (tx.commit() if commit else tx.rollback())
                found = await settle
        assert set(found) == (set(ids) if commit else set())


async def test_settle_gives_up_on_a_lock_that_is_never_released(
    pool: asyncpg.Pool, tenant: Tenant
) -> None:
    sid = await new_session(pool, tenant)
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", sid)
        async with pool.acquire() as reader:
            with pytest.raises(asyncpg.LockNotAvailableError):
                await writes.fetch_settled(reader, [(tenant.id, sid)], [], lock_timeout_s=0.1)


async def test_leased_connection_plans_generically_and_the_pool_forgets_it(
    pool: asyncpg.Pool,
) -> None:
    # the group-commit statement runs with a generic plan; other queries of the pool
    # must not inherit that setting once the lease gives the connection back
    lease = Lease(pool, acquire_timeout_s=5.0)
    conn = await lease.get()
    assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    raw = conn._con  # the connection itself, to recognise it when the pool hands it out
    await lease.release()
    for _ in range(pool.get_max_size()):  # bounded: one of them is the same connection
        async with pool.acquire() as again:
            assert await again.fetchval("SHOW plan_cache_mode") == "auto"
            if again._con is raw:
                break
    else:
        pytest.fail("the pool never handed the leased connection out again")
