"""Faults under concurrent write load, against a real server process.

- SIGKILL several times, restarting each time: every message that got 201 is stored
  exactly once, no message is stored twice, every session's seq is 1..n.
- Postgres connections killed with pg_terminate_backend: 201 or 503 only, nothing
  acknowledged is lost, and the service recovers by itself.
- SIGTERM: every request gets 201 (stored) or a clean refusal; none hangs; the
  process exits by itself within its shutdown timeout.

Each message carries a unique token as its content, so what the clients were told
can be compared with what the database holds.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import secrets
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import Tenant
from tests.support.procs import Server

CLIENTS = 32
SESSIONS = 6
REQUEST_TIMEOUT_S = 20.0  # a request slower than this counts as hung
SHUTDOWN_TIMEOUT_S = 8.0


@dataclasses.dataclass
class Outcome:
    token: str
    session: str
    status: int | None  # None: no HTTP answer (connection refused / dropped)
    body: dict[str, Any] | None = None
    error: str | None = None


class Load:
    """CLIENTS concurrent writers, each message with a unique token, until stopped."""

    def __init__(self, key: str, sessions: list[str]) -> None:
        self.key = key
        self.sessions = sessions
        self.outcomes: list[Outcome] = []
        self.created = asyncio.Event()  # set when ``target`` 201s arrived this round
        self.target = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, base: str, successes: int) -> None:
        self._stop.clear()
        self.created.clear()
        self.target = self.ok_count() + successes
        self._tasks = [asyncio.create_task(self._client(base, i)) for i in range(CLIENTS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), REQUEST_TIMEOUT_S + 5)

    def ok_count(self) -> int:
        return sum(1 for o in self.outcomes if o.status == 201)

    async def _client(self, base: str, i: int) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            n = 0
            while not self._stop.is_set():
                sid = self.sessions[(i + n) % len(self.sessions)]
                n += 1
                token = f"tok-{secrets.token_hex(8)}"
                outcome = Outcome(token, sid, None)
                self.outcomes.append(outcome)
                try:
                    async with http.post(f"{base}/api/v1/sessions/{sid}/messages",
                                         json={"role": "user", "content": token},
                                         headers={"X-Api-Key": self.key}) as r:
                        outcome.status = r.status
                        outcome.body = await r.json()
                except (aiohttp.ClientConnectionError, aiohttp.ContentTypeError) as exc:
                    outcome.error = type(exc).__name__
                    await asyncio.sleep(0.01)  # the server is gone: do not spin
                except TimeoutError:
                    outcome.error = "hung"
                if self.ok_count() >= self.target:
                    self.created.set()


async def _sessions(base: str, key: str) -> list[str]:
    async with aiohttp.ClientSession() as http:
        ids = []
        for _ in range(SESSIONS):
            async with http.post(f"{base}/api/v1/sessions", json={"user_id": "crash"},
                                 headers={"X-Api-Key": key}) as r:
                assert r.status == 201
                ids.append((await r.json())["id"])
        return ids


async def _check_stored(pool: asyncpg.Pool, load: Load) -> None:
    """What the clients were told against what the database holds."""
    sids = [uuid.UUID(s) for s in load.sessions]
    rows = await pool.fetch(
        "SELECT id, session_id, seq, content FROM messages WHERE session_id = ANY($1::uuid[])",
        sids)
    copies = collections.Counter(r["content"] for r in rows)
    assert not [t for t, n in copies.items() if n > 1], "a message was stored twice"
    by_token = {r["content"]: r for r in rows}
    for o in load.outcomes:
        assert o.error != "hung", "a request hung"
        if o.status == 201:
            assert o.body is not None
            row = by_token.get(o.token)
            assert row is not None, f"acknowledged message {o.token} was lost"
            assert str(row["id"]) == o.body["id"] and row["seq"] == o.body["seq"]
            assert str(row["session_id"]) == o.session
        elif o.status == 503:
            assert o.body is not None and o.body["status"] == 503
            # only a write whose outcome could not be learnt may be stored after a 503
            if "could not be completed" not in o.body["message"]:
                assert o.token not in by_token, f"{o.token} got 503 but was stored"
    for sid in sids:
        seqs = sorted(r["seq"] for r in rows if r["session_id"] == sid)
        assert seqs == list(range(1, len(seqs) + 1)), f"gap in session {sid}"
        session = await pool.fetchrow(
            "SELECT last_seq, message_count FROM sessions WHERE id = $1", sid)
        assert session is not None
        assert session["last_seq"] == len(seqs) == session["message_count"]


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    s = Server(database_url, tmp_path / "server.log", app_name=f"chat-crash-{secrets.token_hex(4)}",
               env={"CHAT_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S)})
    yield s
    await s.kill()


async def test_sigkill_under_load_loses_no_acknowledged_write(
    server: Server, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    await server.start()
    load = Load(tenant.key, await _sessions(server.base, tenant.key))
    for _ in range(3):
        load.start(server.base, successes=60)
        await asyncio.wait_for(load.created.wait(), 60)
        server.signal(signal.SIGKILL)  # mid-load: requests are in flight and committing
        await server.exited(30)
        await load.stop()
        await server.start()
    load.start(server.base, successes=30)  # the restarted service carries on
    await asyncio.wait_for(load.created.wait(), 60)
    await load.stop()
    assert load.ok_count() >= 210
    assert not [o for o in load.outcomes if o.status not in (201, 503, None)]
    await _check_stored(pool, load)


async def test_killed_database_connections_give_503_and_the_service_recovers(
    server: Server, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    await server.start()
    app_name = server.database_url.rpartition("application_name=")[2]
    load = Load(tenant.key, await _sessions(server.base, tenant.key))
    load.start(server.base, successes=40)
    await asyncio.wait_for(load.created.wait(), 60)
    killed = 0
    for _ in range(20):  # for about two seconds, kill every connection of the server
        killed += await pool.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = $1", app_name)
        await asyncio.sleep(0.1)
    assert killed > 0
    during = len(load.outcomes)
    # recovery, by itself: writes succeed again once the connections stop dying
    load.target = load.ok_count() + 100
    load.created.clear()
    await asyncio.wait_for(load.created.wait(), 60)
    await load.stop()
    assert {o.status for o in load.outcomes} <= {201, 503}, "only 201 or 503, never 500"
    assert not [o for o in load.outcomes if o.error], "the HTTP server itself never failed"
    assert sum(1 for o in load.outcomes[during:] if o.status == 201) >= 100
    await _check_stored(pool, load)
    # the kills did hit the write path: lost transactions were settled, not guessed
    log = server.log_path.read_text()
    assert "lost transaction did not commit" in log or "commit confirmed" in log


async def test_sigterm_under_load_answers_every_request(
    server: Server, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    await server.start()
    load = Load(tenant.key, await _sessions(server.base, tenant.key))
    load.start(server.base, successes=60)
    await asyncio.wait_for(load.created.wait(), 60)
    server.signal(signal.SIGTERM)
    # it exits by itself: stop taking writes, flush, answer, close the pool
    assert await server.exited(SHUTDOWN_TIMEOUT_S + 20) == 0
    await load.stop()
    assert not [o for o in load.outcomes if o.error == "hung"]
    assert {o.status for o in load.outcomes} <= {201, 503, None}
    refused = [o for o in load.outcomes if o.status is None]
    assert refused, "the clients kept writing until the server was gone"
    await _check_stored(pool, load)
    # a request without an answer was never taken in: it is not stored
    stored = {r["content"] for r in await pool.fetch(
        "SELECT content FROM messages WHERE session_id = ANY($1::uuid[])",
        [uuid.UUID(s) for s in load.sessions])}
    assert not [o.token for o in refused if o.token in stored]
