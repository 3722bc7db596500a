"""The first run on an empty database: tenant ``dev`` with the default retention, said."""

from __future__ import annotations

import dataclasses
import secrets

import pytest

from chat_storage.runtime.settings import Settings
from chat_storage.server.serving import DEV_TENANT, first_run_key
from chat_storage.storage import db, tenants
from tests.conftest import create_database, drop_database


@pytest.mark.parametrize("days, said, stored", [
    (90, "keeps messages 90 days, then archives and deletes them", 90),
    (0, "keeps messages forever", None),
])
async def test_the_first_run_says_how_long_dev_keeps_messages(
        settings: Settings, capsys: pytest.CaptureFixture[str], days: int, said: str,
        stored: int | None) -> None:
    name = f"chat_first_{secrets.token_hex(4)}"
    url = await create_database(name)
    pool = await db.create_pool(url, min_size=1, max_size=1)
    try:
        await first_run_key(pool, dataclasses.replace(
            settings, database_url=url, default_retention_days=days))
        async with pool.acquire() as conn:
            info = await tenants.get_tenant(conn, DEV_TENANT)
    finally:
        await pool.close()
        await drop_database(name)
    out = capsys.readouterr().out
    assert said in out and "--retention-days N" in out
    assert info.retention_days == stored
