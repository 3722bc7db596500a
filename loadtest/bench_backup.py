"""Backup and restore times for N messages (default 100 000): prints figures, checks nothing.

Makes a scratch database on the Postgres of ``--admin-url``, fills it with one tenant,
N/50 sessions and N messages (about 300 bytes of content, a RAG context and usage
each) in one SQL statement per table, then times ``chat-storage backup --to DIR`` and
``chat-storage restore --from DIR`` into a second scratch database, and drops both.

    .venv/bin/python loadtest/bench_backup.py --messages 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR  # noqa: E402
from chat_storage.storage import migrations  # noqa: E402

FILL = """
WITH t AS (INSERT INTO tenants (id, name) VALUES (gen_random_uuid(), 'bench') RETURNING id)
INSERT INTO sessions (id, tenant_id, user_id, title, message_count, last_seq)
SELECT gen_random_uuid(), t.id, 'u' || (i % 100), 'chat ' || i, 50, 50
FROM t, generate_series(1, $1::int / 50) AS i
"""
MESSAGES = """
INSERT INTO messages (id, tenant_id, session_id, seq, role, content, context, usage)
SELECT gen_random_uuid(), s.tenant_id, s.id, n,
       CASE WHEN n % 2 = 1 THEN 'user' ELSE 'assistant' END,
       repeat('lorem ipsum dolor sit amet ', 11) || n,
       '[{"source_id": "doc-1", "snippet": "a retrieved passage", "score": 0.5}]'::jsonb,
       '{"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140}'::jsonb
FROM sessions s, generate_series(1, 50) AS n
"""


def timed(*args: str, env: dict[str, str]) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "chat_storage.server.cli", *args], env=env,
                          capture_output=True, text=True, check=True, cwd=ROOT, timeout=3600)
    return time.monotonic() - started, json.loads(done.stdout)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    base = args.admin_url.rpartition("/")[0]
    names = [f"chat_bench_{k}_{secrets.token_hex(3)}" for k in ("src", "dst")]
    admin = await asyncpg.connect(args.admin_url)
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(f"{base}/{names[0]}")
        try:
            await migrations.migrate(conn, DEFAULT_MIGRATIONS_DIR)
            await conn.execute(FILL, args.messages)
            await conn.execute(MESSAGES)
            count = await conn.fetchval("SELECT count(*) FROM messages")
            size = await conn.fetchval(
                "SELECT pg_size_pretty(pg_database_size(current_database()))")
        finally:
            await conn.close()
        with tempfile.TemporaryDirectory() as scratch:
            env = {"PATH": "/usr/bin:/bin", "CHAT_DATA_DIR": f"{scratch}/data"}
            took_b, backup = timed("backup", "--to", f"{scratch}/b",
                                   env={**env, "DATABASE_URL": f"{base}/{names[0]}"})
            took_r, _ = timed("restore", "--from", f"{scratch}/b",
                              env={**env, "DATABASE_URL": f"{base}/{names[1]}"})
        print(f"messages: {count}, database: {size}, dump: {backup['dump_bytes']} bytes")
        print(f"backup:  {took_b:.1f} s (the command, start to exit)")
        print(f"restore: {took_r:.1f} s (the command, start to exit, checks included)")
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
