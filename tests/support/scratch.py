"""Throwaway databases on a Postgres server, for the tests.

The tests make a fresh database per run (or per test) next to the ones they administer
through ``admin_url`` (a URL of any database on that server, usually ``postgres``),
and drop it afterwards, whatever connections are still open on it.
(``loadtest/harness.py`` has its own, as it runs without ``tests/``.)
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from chat_storage.storage import migrations


def url_of(admin_url: str, name: str) -> str:
    """``admin_url`` with its database replaced by ``name``."""
    return f"{admin_url.rpartition('/')[0]}/{name}"


async def create(admin_url: str, name: str, migrations_dir: Path | None = None) -> str:
    """Create database ``name`` (migrated from ``migrations_dir`` if given); its URL."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = url_of(admin_url, name)
    if migrations_dir is not None:
        conn = await asyncpg.connect(url)
        try:
            await migrations.migrate(conn, migrations_dir)
        finally:
            await conn.close()
    return url


async def drop(admin_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, closing the connections still open on it."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
