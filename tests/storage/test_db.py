"""The pool and the durability check, against real Postgres servers.

fsync is a server-wide setting, so it is turned off on a throwaway server started
for this module (Debian's initdb/pg_ctl on a temporary directory and a free loopback
port), never on the shared one. synchronous_commit=off is tested on the shared
server through a connection-level setting in the DSN, which changes nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import asyncpg
import pytest

from chat_storage.runtime.database import open_database
from chat_storage.runtime.settings import Settings
from chat_storage.storage import db
from chat_storage.storage.errors import UnsafeDatabase

ROOT = Path(__file__).resolve().parents[2]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _skip_outside_ci(reason: str) -> NoReturn:
    """Skip here; in CI (.ci/run installs PostgreSQL) fail: a skip there checks nothing."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def throwaway_server() -> Iterator[str]:
    """A private Postgres server on a free loopback port; its DSN."""
    bindir = _pg_bin()
    if bindir is None:
        _skip_outside_ci("no initdb/pg_ctl in /usr/lib/postgresql/*/bin")
    # Postgres refuses to run as root: then the files and the server belong to "postgres"
    user = "postgres" if os.geteuid() == 0 else None
    if user is not None:
        try:
            owner = pwd.getpwnam(user)
        except KeyError:
            _skip_outside_ci("running as root and there is no 'postgres' user to run a "
                             "server")
    base = Path(tempfile.mkdtemp(prefix="chat-unsafe-pg-"))
    if user is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, port = base / "data", _free_port()

    def run(*cmd: str) -> None:
        subprocess.run(cmd, check=True, user=user, capture_output=True, timeout=120)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
            "--no-sync", "-E", "UTF8", "--no-locale")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60",
            "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


async def _set_fsync(dsn: str, value: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"ALTER SYSTEM SET fsync = {value}")
        await conn.execute("SELECT pg_reload_conf()")
        for _ in range(100):  # the reload is asynchronous: wait until it took effect
            if await conn.fetchval("SHOW fsync") == value:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"fsync did not become {value}")
    finally:
        await conn.close()


async def _check(dsn: str, *, allow_unsafe: bool) -> None:
    pool = await db.create_pool(dsn, min_size=1, max_size=1)
    try:
        await db.check_durability(pool, allow_unsafe=allow_unsafe)
    finally:
        await pool.close()


async def test_durable_server_passes(database_url: str) -> None:
    await _check(database_url, allow_unsafe=False)


async def test_synchronous_commit_off_is_refused_unless_allowed(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    unsafe = f"{database_url}?synchronous_commit=off"
    with pytest.raises(UnsafeDatabase, match="synchronous_commit=off"):
        await _check(unsafe, allow_unsafe=False)
    with caplog.at_level(logging.WARNING, logger="chat_storage.storage.db"):
        await _check(unsafe, allow_unsafe=True)
    assert "database is not durable" in caplog.text
    await _check(f"{database_url}?synchronous_commit=local", allow_unsafe=False)


async def test_fsync_off_is_refused_unless_allowed(throwaway_server: str) -> None:
    await _check(throwaway_server, allow_unsafe=False)
    await _set_fsync(throwaway_server, "off")
    try:
        with pytest.raises(UnsafeDatabase, match="fsync=off"):
            await _check(throwaway_server, allow_unsafe=False)
        await _check(throwaway_server, allow_unsafe=True)
    finally:
        await _set_fsync(throwaway_server, "on")


async def test_service_refuses_to_start_on_an_unsafe_server(
    throwaway_server: str, tmp_path: Path
) -> None:
    await _set_fsync(throwaway_server, "off")
    try:
        settings = Settings.from_env({"DATABASE_URL": throwaway_server})
        with pytest.raises(UnsafeDatabase):
            await open_database(settings)
        # the real command: exits 1 with a one-line reason, before it listens
        env = {**os.environ, "DATABASE_URL": throwaway_server, "CHAT_PORT": str(_free_port())}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chat_storage.server.cli", "serve", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 1
        assert b"fsync=off" in err and b"CHAT_ALLOW_UNSAFE_DB" in err
        # told it is fine: it starts (and migrates the database)
        allowed = Settings.from_env({"DATABASE_URL": throwaway_server,
                                     "CHAT_ALLOW_UNSAFE_DB": "1"})
        pool = await open_database(allowed)
        await pool.close()
    finally:
        await _set_fsync(throwaway_server, "on")


async def test_terminate_backend_ends_only_this_services_connections(database_url: str) -> None:
    pool = await db.create_pool(database_url, min_size=2, max_size=2)
    stranger = await asyncpg.connect(database_url, server_settings={"application_name": "other"})
    try:
        async with pool.acquire() as ours:
            victim = await pool.acquire()
            assert await ours.fetchval("SHOW application_name") == db.APPLICATION_NAME
            assert not await db.terminate_backend(ours, stranger.get_server_pid())
            assert await stranger.fetchval("SELECT 1") == 1
            pid = victim.get_server_pid()
            assert await db.terminate_backend(ours, pid)
            async with asyncio.timeout(10):  # the server process ends soon after the signal
                while await ours.fetchval(  # noqa: ASYNC110 - no event to await
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                    await asyncio.sleep(0.02)
            with contextlib.suppress(*db.CONNECTION_ERRORS):  # it is dead: that may show
                await pool.release(victim)
    finally:
        await stranger.close()
        pool.terminate()


async def test_application_name_from_the_dsn_wins(database_url: str) -> None:
    pool = await db.create_pool(f"{database_url}?application_name=mine", min_size=1,
                                max_size=1)
    try:
        assert await pool.fetchval("SHOW application_name") == "mine"
    finally:
        await pool.close()
