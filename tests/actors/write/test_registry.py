"""The registry and its session mailboxes on the real database: group commit, order,
isolation of a bad write, backpressure, deadlines, idle eviction, shutdown."""

from __future__ import annotations

import asyncio
import gc
import weakref

import asyncpg
import pytest

from chat_storage.actors.write.errors import OutcomeUnknown, Overloaded, ShuttingDown
from chat_storage.actors.write.protocols import NoListener
from chat_storage.storage.records import SessionKey
from tests.actors.conftest import (
    MakeRegistry,
    metric,
    msg,
    new_session,
    row_locked,
    stored,
)
from tests.conftest import Tenant


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "direct"])
async def test_concurrent_writes_get_gap_free_seq_in_arrival_order(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant, shared: bool
) -> None:
    registry = await make_registry(shared=shared)
    sids = [await new_session(pool, tenant) for _ in range(3)]
    contents = [(sids[i % 3], f"m{i}") for i in range(150)]
    results = await asyncio.gather(*(registry.write(tenant.id, sid, msg(c))
                                     for sid, c in contents))
    for sid in sids:
        sent = [c for s, c in contents if s == sid]
        rows = await stored(pool, sid)
        assert [r["content"] for r in rows] == sent  # arrival order is seq order
        assert [r["seq"] for r in rows] == list(range(1, len(sent) + 1))
        last_seq = await pool.fetchval("SELECT last_seq FROM sessions WHERE id = $1", sid)
        assert last_seq == len(sent)
    # each answer is what was stored
    by_content = {r["content"]: r for sid in sids for r in await stored(pool, sid)}
    for (_, content), [answer] in zip(contents, results, strict=True):
        assert answer["id"] == by_content[content]["id"]
        assert answer["seq"] == by_content[content]["seq"]


async def test_concurrent_writes_are_committed_in_groups(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    registry = await make_registry()
    sid = await new_session(pool, tenant)
    commits = metric("chat_write_batch_size_count")
    singles = metric("chat_write_batch_size_bucket", le="1.0")
    await asyncio.gather(*(registry.write(tenant.id, sid, msg(f"m{i}")) for i in range(100)))
    transactions = metric("chat_write_batch_size_count") - commits
    assert transactions < 100
    # at least one transaction carried more than one write
    assert metric("chat_write_batch_size_bucket", le="1.0") - singles < transactions


async def test_one_commit_spans_many_quiet_sessions(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    registry = await make_registry()
    sids = [await new_session(pool, tenant) for _ in range(40)]
    commits = metric("chat_write_batch_size_count")
    await asyncio.gather(*(registry.write(tenant.id, sid, msg("hi")) for sid in sids))
    assert metric("chat_write_batch_size_count") - commits < len(sids)
    for sid in sids:
        assert [r["seq"] for r in await stored(pool, sid)] == [1]


async def test_a_bad_write_fails_alone_and_takes_no_seq(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    registry = await make_registry()
    sid = await new_session(pool, tenant)
    groups = [msg(f"m{i}", role="wizard" if i == 4 else "user") for i in range(10)]
    results = await asyncio.gather(*(registry.write(tenant.id, sid, g) for g in groups),
                                   return_exceptions=True)
    assert isinstance(results[4], asyncpg.CheckViolationError)
    assert all(isinstance(r, list) for i, r in enumerate(results) if i != 4)
    rows = await stored(pool, sid)
    assert [r["content"] for r in rows] == [f"m{i}" for i in range(10) if i != 4]
    assert [r["seq"] for r in rows] == list(range(1, 10))


async def test_a_bad_write_in_a_shared_commit_fails_alone(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    registry = await make_registry(committers=1)
    sids = [await new_session(pool, tenant) for _ in range(6)]
    writes = [(sid, msg(f"{n}", role="wizard" if (i, n) == (2, 1) else "user"))
              for n in range(3) for i, sid in enumerate(sids)]
    results = await asyncio.gather(*(registry.write(tenant.id, sid, g) for sid, g in writes),
                                   return_exceptions=True)
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [6 + 2] and isinstance(results[8], asyncpg.CheckViolationError)
    for i, sid in enumerate(sids):
        rows = await stored(pool, sid)
        expected = ["0", "2"] if i == 2 else ["0", "1", "2"]
        assert [r["content"] for r in rows] == expected
        assert [r["seq"] for r in rows] == list(range(1, len(expected) + 1))


async def test_write_to_a_missing_session_is_not_found(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> None:
    from chat_storage.storage.errors import NotFound

    registry = await make_registry()
    sid = await new_session(pool, other_tenant)
    with pytest.raises(NotFound):
        await registry.write(tenant.id, sid, msg("not yours"))
    assert await stored(pool, sid) == []


async def test_full_mailbox_answers_overloaded_at_once_and_stays_bounded(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    registry = await make_registry(mailbox_size=4)
    sid = await new_session(pool, tenant)
    rejected = metric("chat_writes_rejected_total", reason="mailbox_full")
    async with row_locked(pool, sid):
        first = asyncio.create_task(registry.write(tenant.id, sid, msg("first")))
        await asyncio.sleep(0)  # the first write leaves the mailbox for the committer
        accepted, refused = [], 0
        for i in range(50):
            task = asyncio.create_task(registry.write(tenant.id, sid, msg(f"m{i}")))
            await asyncio.sleep(0)
            if task.done():  # refused synchronously: nothing waits
                with pytest.raises(Overloaded):
                    task.result()
                refused += 1
            else:
                accepted.append(task)
            assert registry.mailbox(tenant.id, sid).depth <= 4
        assert len(accepted) == 4 and refused == 46
        assert metric("chat_writes_rejected_total", reason="mailbox_full") - rejected == 46
    await asyncio.gather(first, *accepted)
    assert [r["content"] for r in await stored(pool, sid)] == ["first", "m0", "m1", "m2", "m3"]


async def test_process_wide_bound_on_pending_writes(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    registry = await make_registry(max_pending=8)
    sids = [await new_session(pool, tenant) for _ in range(12)]
    async with row_locked(pool, sids[0]):
        # a commit that waits holds up its transaction, so the other writes pile up
        tasks = [asyncio.create_task(registry.write(tenant.id, sid, msg("x"))) for sid in sids]
        await asyncio.sleep(0)
        assert registry.pending <= 8
        refused = [t for t in tasks if t.done() and isinstance(t.exception(), Overloaded)]
        assert len(refused) == 4
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_write_that_waited_past_its_deadline_is_refused_and_not_stored(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    registry = await make_registry(write_timeout_s=0.3, commit_timeout_s=30.0)
    sid = await new_session(pool, tenant)
    async with row_locked(pool, sid):
        first = asyncio.create_task(registry.write(tenant.id, sid, msg("committing")))
        await asyncio.sleep(0)
        queued = [asyncio.create_task(registry.write(tenant.id, sid, msg(f"q{i}")))
                  for i in range(3)]
        done, _ = await asyncio.wait(queued, timeout=10)
        assert len(done) == 3  # answered by the deadline, while the first still commits
        for task in queued:
            with pytest.raises(Overloaded):
                task.result()
        assert not first.done()
    [answer] = await first  # a started write is answered with its commit's outcome
    assert [r["content"] for r in await stored(pool, sid)] == ["committing"]
    assert answer["seq"] == 1


async def test_idle_mailbox_is_evicted_and_recreated(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    registry = await make_registry(idle_s=0.1)
    sid = await new_session(pool, tenant)
    await registry.write(tenant.id, sid, msg("one"))
    assert len(registry) == 1
    async with asyncio.timeout(10):
        # no event to await: poll (bounded) until the janitor evicts it
        while len(registry):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    [again] = await registry.write(tenant.id, sid, msg("two"))
    assert again["seq"] == 2


async def test_mailbox_of_a_session_in_use_is_not_evicted(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    busy, quiet = await new_session(pool, tenant), await new_session(pool, tenant)

    class Subscribed(NoListener):
        def in_use(self, key: SessionKey) -> bool:
            return key[1] == busy

    registry = await make_registry(idle_s=1000.0, listener=Subscribed())
    await registry.write(tenant.id, busy, msg("a"))
    await registry.write(tenant.id, quiet, msg("b"))
    later = asyncio.get_running_loop().time() + 2000.0
    assert registry.evict_idle(later) == 1
    assert len(registry) == 1


async def test_close_commits_every_queued_write_then_refuses(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    registry = await make_registry()
    sid = await new_session(pool, tenant)
    async with row_locked(pool, sid):
        tasks = [asyncio.create_task(registry.write(tenant.id, sid, msg(f"m{i}")))
                 for i in range(20)]
        await asyncio.sleep(0)
        closing = asyncio.create_task(registry.close(10.0))
        await asyncio.sleep(0.05)
        with pytest.raises(ShuttingDown):
            await registry.write(tenant.id, sid, msg("late"))
    await closing
    assert all(isinstance(r, list) for r in await asyncio.gather(*tasks))
    assert [r["seq"] for r in await stored(pool, sid)] == list(range(1, 21))


async def test_close_past_its_deadline_answers_everyone_and_claims_nothing(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    registry = await make_registry(commit_timeout_s=30.0)
    sid = await new_session(pool, tenant)
    async with row_locked(pool, sid):
        first = asyncio.create_task(registry.write(tenant.id, sid, msg("committing")))
        await asyncio.sleep(0)
        queued = [asyncio.create_task(registry.write(tenant.id, sid, msg(f"q{i}")))
                  for i in range(5)]
        await registry.close(0.2)
        await asyncio.sleep(0)  # the answers are delivered
        for task in queued:  # never started: refused, not stored
            assert task.done()
            with pytest.raises(ShuttingDown):
                task.result()
        # the transaction still waiting was abandoned: its outcome is not claimed
        assert first.done()
        with pytest.raises(OutcomeUnknown):
            first.result()
    rows = await stored(pool, sid)
    assert [r["content"] for r in rows] in ([], ["committing"])  # at most once


async def test_a_caller_that_went_away_is_not_kept_alive(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    registry = await make_registry()
    sid = await new_session(pool, tenant)

    class Connection:  # stands for the request / socket of the caller
        pass

    async def handler(conn: Connection) -> None:
        await registry.write(tenant.id, sid, msg("bye"))

    conn = Connection()
    ref = weakref.ref(conn)
    async with row_locked(pool, sid):
        task = asyncio.create_task(handler(conn))
        await asyncio.sleep(0.05)
        task.cancel()
        del conn
    with pytest.raises(asyncio.CancelledError):
        await task
    del task
    async with asyncio.timeout(10):
        while not registry.mailbox(tenant.id, sid).idle:  # noqa: ASYNC110 - bounded poll
            await asyncio.sleep(0.01)
    gc.collect()
    assert ref() is None
    # the write had started, so it was committed even though nobody waits for it
    assert [r["content"] for r in await stored(pool, sid)] == ["bye"]


async def test_the_janitor_survives_a_failing_round(make_registry: MakeRegistry,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A round that raises is logged and counted; the next round still runs (a dead
    janitor would let queued writes outlive their deadline)."""
    registry = await make_registry(write_timeout_s=0.05)
    real = registry.expire
    failed, ran_again = asyncio.Event(), asyncio.Event()

    def flaky(now: float | None = None) -> int:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("a bug in one round")
        ran_again.set()
        return real(now)

    before = metric("chat_registry_janitor_failures_total")
    monkeypatch.setattr(registry, "expire", flaky)
    async with asyncio.timeout(5):
        await failed.wait()
        await ran_again.wait()
    assert metric("chat_registry_janitor_failures_total") == before + 1
