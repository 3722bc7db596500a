"""For the backup tests: run the two commands, and read whole databases and buckets.

The comparisons here are the tests' own (every row of every table as text, every
sequence, every object's bytes), not the manifest's checksums they check.
"""

from __future__ import annotations

import subprocess
from typing import Any

import asyncpg
from aiobotocore.session import get_session

from tests.support.motoserver import CREDENTIALS
from tests.support.procs import ROOT, clean_env, cli_command

COMMAND_DEADLINE_S = 120.0


def s3_env(endpoint: str, bucket: str | None) -> dict[str, str]:
    """The settings of a service whose attachments are in ``bucket`` on moto."""
    env = {"S3_ENDPOINT_URL": endpoint, "S3_REGION": CREDENTIALS["region_name"],
           "S3_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
           "S3_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"]}
    if bucket is not None:
        env["S3_BUCKET"] = bucket
    return env


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``chat-storage args...`` to completion, with only ``env`` as its settings."""
    return subprocess.run(
        [*cli_command(), *args], env=clean_env(CHAT_LOG_LEVEL="WARNING", **env), cwd=ROOT,
        capture_output=True, text=True, timeout=COMMAND_DEADLINE_S, check=False)


async def rows(url: str) -> dict[str, list[str]]:
    """Every row of every table of the ``public`` schema, as text, sorted per table."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET TimeZone = 'UTC'")
        names = [r["relname"] for r in await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r'")]
        return {name: [r["row"] for r in await conn.fetch(
            f'SELECT t::text AS row FROM "{name}" t ORDER BY 1')] for name in sorted(names)}
    finally:
        await conn.close()


async def sequences(url: str) -> dict[str, Any]:
    """The last value of every sequence (identity columns included)."""
    conn = await asyncpg.connect(url)
    try:
        return {r["sequencename"]: r["last_value"] for r in await conn.fetch(
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'")}
    finally:
        await conn.close()


async def objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    """Every object of ``bucket``: its key and bytes."""
    out: dict[str, bytes] = {}
    async with get_session().create_client("s3", endpoint_url=endpoint, **CREDENTIALS) as s3:
        listed = await s3.list_objects_v2(Bucket=bucket)
        for item in listed.get("Contents", []):
            got = await s3.get_object(Bucket=bucket, Key=item["Key"])
            async with got["Body"] as body:
                out[item["Key"]] = await body.read()
    return out
