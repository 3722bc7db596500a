"""Releases can be rolled back: the previous release's code runs on the newest schema.

The rule (docs/operations.md, "Releases that can be rolled back"): expand, deploy,
contract — a migration only adds, so the release before it keeps working on the schema
it leaves, during a rolling update (both releases serve at once) and after
``helm rollback`` (the old pods come back; migrations never run backwards).

"The previous release" is the code of the commit before the one that added the newest
migration: the newest code that ran on the previous migration set (the checkout's own
HEAD while that migration is not committed yet). It is taken from git with ``git
archive`` and served as a real process beside this checkout's, on one database (with
every migration applied) and one Redis. Each writes what the other then reads, live
events cross between them, and a streamed answer made by one is watched on the other.

A static check goes with it: every migration only expands, except ones reviewed here.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chat_storage.storage import migrations
from tests.conftest import REDIS_URL, Tenant
from tests.support.procs import ROOT, Cluster, Server
from tests.support.procws import Reader, new_session, open_ws, subscriber
from tests.support.streamkit import rebuild, recv_until, start

SQL = ROOT / "sql"
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
IN_CI = bool(os.environ.get("CI"))

# Statements the previous release may not survive: what was there is dropped, renamed,
# retyped or newly required. A migration that needs one is a "contract" step and must
# come a release after the code stopped using what it removes.
CONTRACTING = re.compile(
    r"\b(DROP\s+(TABLE|COLUMN|INDEX|CONSTRAINT|TYPE|VIEW|FUNCTION|TRIGGER)"
    r"|RENAME\b|ALTER\s+COLUMN\s+\w+\s+(SET\s+DATA\s+)?TYPE\b|SET\s+NOT\s+NULL"
    r"|ADD\s+COLUMN\s+(IF\s+NOT\s+EXISTS\s+)?\w+\s+[^,;]*\bNOT\s+NULL\b(?![^,;]*\bDEFAULT\b))",
    re.IGNORECASE,
)
# Reviewed exceptions, each with why the release before it still runs.
REVIEWED = {
    5: "idempotency_keys.response jsonb -> json: both read back as JSON text through "
       "asyncpg, which the previous release decoded the same way",
}


def _git(*args: str, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(ROOT), *args], stdout=stdout,
                          stderr=subprocess.PIPE, timeout=120, check=False)


def previous_release() -> str | None:
    """The git revision of the previous release, or None outside a git checkout."""
    if not (ROOT / ".git").exists():
        return None
    shallow = _git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true"
    assert not shallow, "a shallow clone: `git fetch --unshallow` (.ci/run does) to find it"
    newest = migrations.discover(SQL)[-1]
    path = f"sql/{newest.version:04d}_{newest.name}.sql"
    committed = _git("log", "--diff-filter=A", "--format=%H", "-1", "--", path)
    added = committed.stdout.decode().strip()
    return f"{added}^" if added else "HEAD"


def without_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def test_every_migration_only_expands_or_is_reviewed() -> None:
    found = {m.version: [hit[0] for hit in CONTRACTING.findall(without_comments(m.sql))]
             for m in migrations.discover(SQL)}
    contracting = {v for v, hits in found.items() if hits}
    assert contracting <= set(REVIEWED), {v: found[v] for v in contracting - set(REVIEWED)}
    # a review that no longer matches its migration is stale
    assert set(REVIEWED) <= contracting


@pytest.mark.parametrize("statement", [
    "ALTER TABLE sessions DROP COLUMN title;",
    "ALTER TABLE messages RENAME COLUMN content TO body;",
    "ALTER TABLE messages ALTER COLUMN seq TYPE integer;",
    "ALTER TABLE messages ALTER COLUMN metadata SET NOT NULL;",
    "ALTER TABLE messages ADD COLUMN lang text NOT NULL;",
    "DROP INDEX messages_session_seq;",
])
def test_contracting_statements_are_recognised(statement: str) -> None:
    assert CONTRACTING.search(statement)


@pytest.mark.parametrize("statement", [
    "ALTER TABLE messages ADD COLUMN lang text NOT NULL DEFAULT 'en';",
    "ALTER TABLE messages ADD COLUMN lang text;",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS m_lang ON messages (lang);",
    "CREATE TABLE notes (id uuid PRIMARY KEY, body text NOT NULL);",
])
def test_expanding_statements_pass(statement: str) -> None:
    assert not CONTRACTING.search(statement)


@pytest.fixture(scope="module")
def previous_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    revision = previous_release()
    if revision is None:
        if IN_CI:
            pytest.fail("not a git checkout: CI needs the history to find the previous release")
        pytest.skip("not a git checkout: the previous release cannot be found")
    archive = _git("archive", "--format=tar", revision)
    assert archive.returncode == 0, archive.stderr.decode()
    root = tmp_path_factory.mktemp("previous-release")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="tar")
    # the previous migration set is the start of this one, unedited (same checksums)
    old = [(m.version, m.checksum) for m in migrations.discover(root / "sql")]
    new = [(m.version, m.checksum) for m in migrations.discover(SQL)]
    assert old == new[:len(old)], "a migration of the previous release was edited"
    assert len(old) < len(new) or revision == "HEAD"
    return root


@pytest.fixture
async def releases(database_url: str, tmp_path: Path,
                   previous_checkout: Path) -> AsyncIterator[tuple[Server, Server]]:
    """(previous, current) serving one database and one Redis prefix."""
    cluster = Cluster(database_url, tmp_path)
    env = {"CHAT_REDIS_PREFIX": cluster.prefix, "CHAT_SHUTDOWN_TIMEOUT_S": "5"}
    old = Server(database_url, tmp_path / "previous.log", redis_url=REDIS_URL, env=env,
                 root=previous_checkout)
    new = Server(database_url, tmp_path / "current.log", redis_url=REDIS_URL, env=env)
    cluster.servers += [old, new]
    try:
        await asyncio.gather(old.start(), new.start())
        yield old, new
    finally:
        await cluster.close()


MESSAGE = {
    "role": "user",
    "content": "what does the refund policy say? é🙂",
    "context": [{"source_id": "doc-7", "snippet": "Refunds within 30 days.", "score": 0.91}],
    "metadata": {"lang": "en", "tags": ["billing"]},
}
ANSWER = {"role": "assistant", "content": "Within 30 days.",
          "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}
# what both releases serve of a message (a newer release may add fields)
SHARED_FIELDS = ("id", "session_id", "seq", "role", "content", "context", "metadata",
                 "usage", "parent_id", "status", "created_at")


def shared(message: dict[str, Any]) -> dict[str, Any]:
    return {k: message.get(k) for k in SHARED_FIELDS}


async def history(http: aiohttp.ClientSession, server: Server, tenant: Tenant,
                  sid: str) -> list[dict[str, Any]]:
    async with http.get(f"{server.base}/api/v1/sessions/{sid}/messages?limit=100",
                        headers=tenant.headers) as r:
        assert r.status == 200, await r.text()
        items: list[dict[str, Any]] = (await r.json())["data"]
        return items


async def post(http: aiohttp.ClientSession, server: Server, tenant: Tenant, sid: str,
               body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{server.base}/api/v1/sessions/{sid}/messages", json=body,
                         headers=tenant.headers) as r:
        assert r.status == 201, await r.text()
        created: dict[str, Any] = await r.json()
        return created


async def test_each_release_reads_what_the_other_writes(
        releases: tuple[Server, Server], tenant: Tenant) -> None:
    old, new = releases
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        for writer, reader in ((old, new), (new, old)):
            sid = await new_session(http, writer, tenant)
            written = [await post(http, writer, tenant, sid, MESSAGE),
                       await post(http, writer, tenant, sid, ANSWER)]
            assert [shared(m) for m in await history(http, reader, tenant, sid)] == \
                   [shared(m) for m in written]
            # the reader changes what the writer made; the writer sees the change
            async with http.patch(f"{reader.base}/api/v1/sessions/{sid}",
                                  json={"title": "refunds"}, headers=tenant.headers) as r:
                assert r.status == 200, await r.text()
            async with http.get(f"{writer.base}/api/v1/sessions/{sid}",
                                headers=tenant.headers) as r:
                assert r.status == 200 and (await r.json())["title"] == "refunds"
            async with http.get(f"{reader.base}/api/v1/sessions/{sid}/export?format=json",
                                headers=tenant.headers) as r:
                assert r.status == 200, await r.text()
                exported = await r.json()
            assert [m["content"] for m in exported["messages"]] == \
                   [MESSAGE["content"], ANSWER["content"]]
            async with http.delete(f"{reader.base}/api/v1/sessions/{sid}/messages/"
                                   f"{written[1]['id']}", headers=tenant.headers) as r:
                assert r.status == 204, await r.text()
            assert len(await history(http, writer, tenant, sid)) == 2  # a tombstone keeps seq


async def test_live_events_and_streams_cross_between_releases(
        releases: tuple[Server, Server], tenant: Tenant) -> None:
    old, new = releases
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        for producer_on, watcher_on in ((old, new), (new, old)):
            sid = await new_session(http, producer_on, tenant)
            watcher: Reader = await subscriber(http, watcher_on, tenant, sid)
            producer = await open_ws(http, producer_on, tenant, sid)
            stream_id = (await start(producer, ref="s"))["stream_id"]
            parts = [f"part {i} é🙂 " for i in range(40)]
            for part in parts:
                await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                          "delta": part})
            await producer.send_json({"type": "stream.end", "ref": "e",
                                      "stream_id": stream_id})
            await recv_until(producer, lambda f: f.get("ref") == "e")
            await watcher.wait(lambda fs: any(f["type"] == "stream.completed" for f in fs))
            assert rebuild(watcher.frames, stream_id) == "".join(parts)
            # a plain message written on the watcher's side reaches the producer's side
            await post(http, watcher_on, tenant, sid, MESSAGE)
            stored = await history(http, producer_on, tenant, sid)
            assert [m["content"] for m in stored] == ["".join(parts), MESSAGE["content"]]
            await producer.close()
            await watcher.close()
