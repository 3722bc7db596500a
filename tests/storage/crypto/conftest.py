"""Fixtures of the encryption tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.encryption import switched_off_after


@pytest.fixture(autouse=True)
async def _encryption_off_afterwards(pool: asyncpg.Pool) -> AsyncIterator[None]:
    async for _ in switched_off_after(pool):
        yield
