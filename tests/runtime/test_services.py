"""The composition root: services built in order, stopped in order within one deadline."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import asyncpg
import pytest

from chat_storage.actors.write.errors import ShuttingDown
from chat_storage.runtime.deadline import Deadline
from chat_storage.runtime.services import Services
from chat_storage.runtime.settings import Settings
from chat_storage.storage import dbmetrics
from chat_storage.storage.broker import MemoryBroker
from chat_storage.storage.objects import LocalStore
from tests.conftest import REDIS_URL


async def test_without_redis_the_process_runs_on_memory_parts(settings: Settings) -> None:
    services = await Services.open(settings)
    try:
        assert services.redis is None and isinstance(services.broker, MemoryBroker)
        assert isinstance(services.objects, LocalStore)
        assert services.consumer is None
        assert await services.redis_status() is None
    finally:
        await services.close(Deadline(5.0))
    assert services.pool.is_closing()


async def test_with_redis_one_client_serves_broker_limiter_and_ingestion(
        settings: Settings, prefix: str) -> None:
    services = await Services.open(dataclasses.replace(
        settings, redis_url=REDIS_URL, redis_prefix=prefix, ingest_mode="async"))
    try:
        assert services.redis is not None and services.ingest is not None
        assert services.consumer is not None
        assert await services.redis_status() == "ok"
    finally:
        await services.close(Deadline(5.0))


async def test_after_intake_stops_writes_are_refused(settings: Settings) -> None:
    services = await Services.open(settings)
    try:
        services.stop_intake()
        with pytest.raises(ShuttingDown):
            services.registry.submit(uuid.uuid4(), uuid.uuid4(), None)  # type: ignore[arg-type]
    finally:
        await services.close(Deadline(5.0))


async def test_a_stuck_step_costs_only_what_is_left_of_the_one_deadline(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    services = await Services.open(settings)
    stuck = asyncio.Event()

    async def never_closes() -> None:
        stuck.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(services.broker, "close", never_closes)
    deadline = Deadline(1.0)
    # the guard: without the deadline this close would never return
    async with asyncio.timeout(10):
        await services.close(deadline)
    assert stuck.is_set() and deadline.expired
    assert services.pool.is_closing()  # the last step still ran: the pool is terminated


async def test_a_failed_start_closes_what_was_opened(settings: Settings) -> None:
    bad = dataclasses.replace(settings, s3_bucket="no-such-bucket",
                              s3_endpoint_url="http://127.0.0.1:9")  # nothing listens
    pools: list[asyncpg.Pool] = []
    real = dbmetrics.MeteredPool  # what storage/db.py's create_pool builds

    def spy(*args: object, **kwargs: object) -> asyncpg.Pool:
        pool = real(*args, **kwargs)
        pools.append(pool)
        return pool

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dbmetrics, "MeteredPool", spy)
        with pytest.raises(OSError):
            await Services.open(bad)
    assert len(pools) == 1 and pools[0].is_closing()
