"""Migration 0014 names the session of every idempotent reply stored before it."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import asyncpg

from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR
from chat_storage.storage import migrations
from tests.storage.test_migrations import empty_db  # noqa: F401  # a fixture

MIGRATION = "0014_idempotency_session.sql"


def hide_from(sql: Path, first: str) -> list[Path]:
    """Set aside the migrations from ``first`` on (the schema as it was before)."""
    later = [p for p in sql.glob("*.sql") if p.name >= first]
    for path in later:
        path.rename(path.with_suffix(".later"))
    return later


def restore(later: list[Path]) -> None:
    for path in later:
        path.with_suffix(".later").rename(path)


async def test_replies_stored_before_0014_get_their_session(
    empty_db: str, tmp_path: Path  # noqa: F811  # the fixture
) -> None:
    sql = Path(shutil.copytree(DEFAULT_MIGRATIONS_DIR, tmp_path / "sql"))
    later = hide_from(sql, MIGRATION)
    s1, s2, s3, s4 = (str(uuid.uuid4()) for _ in range(4))
    replies = {  # the shapes the routes answer with
        "message": {"id": str(uuid.uuid4()), "session_id": s1, "content": "c"},
        "batch": {"data": [{"id": str(uuid.uuid4()), "session_id": s2}]},
        "attachment": {"attachment": {"id": str(uuid.uuid4()), "session_id": s3,
                                      "name": "n.pdf"}, "upload": {}},
        "session": {"id": s4, "user_id": "u", "title": "t"},
        "ingest-202": {"id": str(uuid.uuid4()), "session_id": s1, "status": "accepted"},
    }
    conn = await asyncpg.connect(empty_db)
    try:
        await migrations.migrate(conn, sql)
        tenant = uuid.uuid4()
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, 't')", tenant)
        for key, reply in replies.items():
            await conn.execute(
                "INSERT INTO idempotency_keys (tenant_id, key, request_hash, status_code, "
                "response) VALUES ($1, $2, '\\x00', 201, $3::json)", tenant, key,
                json.dumps(reply))
        await conn.execute("INSERT INTO idempotency_keys (tenant_id, key, request_hash, "
                           "locked_until) VALUES ($1, 'in-flight', '\\x00', now())", tenant)
        restore(later)
        await migrations.migrate(conn, sql)
        rows = await conn.fetch("SELECT key, session_id::text AS s FROM idempotency_keys")
        assert {r["key"]: r["s"] for r in rows} == {
            "message": s1, "batch": s2, "attachment": s3, "session": s4, "ingest-202": s1,
            "in-flight": None}
    finally:
        await conn.close()
