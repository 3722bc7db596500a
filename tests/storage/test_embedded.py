"""The embedded Postgres server, started for real from the pip-installed binaries.

As root (CI, containers) this also covers the unprivileged system user and the ACL
grant: each data directory is made by ``mkdtemp``, mode 0700, so the server's user may
enter it only through the ACL entry that ``embedded`` adds.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from chat_storage.storage import embedded, embedded_user

DEADLINE_S = 120
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    """A new 0700 directory outside pytest's ``tmp_path``.

    Not ``tmp_path``: every pytest run on the machine does ``chmod 0700`` on
    ``/tmp/pytest-of-<user>``, which masks out the ACL entry that lets the server's
    user (under root) through, so runs of other suites at the same time would break this.
    """
    path = Path(tempfile.mkdtemp(prefix="chat-embedded-test-"))
    yield path
    embedded.stop(path)
    shutil.rmtree(path, ignore_errors=True)


async def test_starts_accepts_asyncpg_and_is_durable(tmp_dir: Path) -> None:
    dsn = await asyncio.to_thread(embedded.start, tmp_dir)
    pgdata = tmp_dir / "pg"
    try:
        conn = await asyncpg.connect(dsn)
        try:
            settings = {
                name: await conn.fetchval(f"SHOW {name}")
                for name in ("fsync", "synchronous_commit", "full_page_writes",
                             "listen_addresses", "server_encoding")
            }
            assert await conn.fetchval("SELECT 1 + 1") == 2
        finally:
            await conn.close()
        assert settings == {
            "fsync": "on", "synchronous_commit": "on", "full_page_writes": "on",
            "listen_addresses": "",  # Unix socket only: nothing reachable over TCP
            "server_encoding": "UTF8",
        }
        assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700
        if os.geteuid() == 0:  # Postgres refuses root: it runs as the system user
            assert pgdata.stat().st_uid == pwd.getpwnam(embedded_user.SYSTEM_USER).pw_uid
        # a second start in the same process joins the running server
        assert await asyncio.to_thread(embedded.start, tmp_dir) == dsn
    finally:
        await asyncio.to_thread(embedded.stop, tmp_dir)
    assert not (pgdata / "postmaster.pid").exists()


async def test_restart_keeps_data_and_overrides_unsafe_config(tmp_dir: Path) -> None:
    dsn = await asyncio.to_thread(embedded.start, tmp_dir)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
            # a config that would lose acknowledged commits must not take effect
            await conn.execute("ALTER SYSTEM SET fsync = off")
            await conn.execute("ALTER SYSTEM SET synchronous_commit = off")
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(embedded.stop, tmp_dir)

    dsn = await asyncio.to_thread(embedded.start, tmp_dir)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT x FROM kept") == 42
            assert await conn.fetchval("SHOW fsync") == "on"
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(embedded.stop, tmp_dir)


async def test_shared_by_processes_stopped_by_the_last(tmp_dir: Path) -> None:
    """Another process joins and leaves; the server stays up for this one."""
    dsn = await asyncio.to_thread(embedded.start, tmp_dir)
    try:
        other = textwrap.dedent(f"""
            from pathlib import Path
            from chat_storage.storage import embedded
            print(embedded.start(Path({str(tmp_dir)!r})))
        """)  # exits normally: its atexit hook leaves the server
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", other, stdout=subprocess.PIPE,
            cwd=REPO,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), DEADLINE_S)
        assert proc.returncode == 0
        assert out.decode().strip() == dsn
        conn = await asyncpg.connect(dsn)  # still running for us
        await conn.close()
    finally:
        await asyncio.to_thread(embedded.stop, tmp_dir)
    assert not (tmp_dir / "pg" / "postmaster.pid").exists()
