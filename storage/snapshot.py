"""What a backup records of one database snapshot, and what a restore checks against it.

A backup holds one ``REPEATABLE READ`` transaction open, exports its snapshot for
``pg_dump --snapshot`` and reads here, in the same snapshot, the facts the manifest
keeps: the schema version, the row count of every table, a content checksum per
tenant and the attachment objects. A restore computes the same facts on the restored
database and compares: equal facts mean every row came back.

The checksum of a tenant covers every row of every table with a ``tenant_id`` column
(and its own ``tenants`` row): each row's text form, sorted bytewise, hashed per table;
the per-table digests are hashed together in Python. The text form is made fixed by
:func:`fix_text_forms` (time zone, date and float formats), so it does not depend on
the server's or the session's settings.
"""

from __future__ import annotations

import dataclasses
import hashlib

import asyncpg

NO_TENANT = "-"  # rows whose tenant_id is NULL (audit entries of no tenant)

# every setting that changes a row's text form, fixed for the transaction
_TEXT_FORMS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}


@dataclasses.dataclass(frozen=True, slots=True)
class StoredObject:
    """An attachment's file in the object store, as its row describes it."""

    key: str
    mime: str
    size: int
    sha256: str
    ready: bool


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (names here come from the catalog)."""
    return '"' + name.replace('"', '""') + '"'


async def fix_text_forms(conn: asyncpg.Connection) -> None:
    """Fix the text form of values for the current transaction (``SET LOCAL``)."""
    for name, value in _TEXT_FORMS.items():
        await conn.execute("SELECT set_config($1, $2, true)", name, value)


async def export_snapshot(conn: asyncpg.Connection) -> str:
    """The id of this transaction's snapshot, for ``pg_dump --snapshot``."""
    snapshot: str = await conn.fetchval("SELECT pg_export_snapshot()")
    return snapshot


async def schema_version(conn: asyncpg.Connection) -> int | None:
    """The newest applied migration; None on a database that has none."""
    if not await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL"):
        return None
    version: int | None = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    return version


async def server_version(conn: asyncpg.Connection) -> str:
    """The server's version, as it says it (``15.19 (Debian ...)``)."""
    version: str = await conn.fetchval("SHOW server_version")
    return version


# Tables whose rows a backup never holds: the data keys (docs/security.md). A backup
# holds encrypted tenants' content as ciphertext only; it opens with the keys the live
# database still has, so a user erased after the backup stays erased in it.
NOT_BACKED_UP = ("data_keys",)


async def tables(conn: asyncpg.Connection) -> list[str]:
    """The service's tables (the ``public`` schema's) whose rows a backup holds, by name."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY c.relname"
    )
    return [r["relname"] for r in rows if r["relname"] not in NOT_BACKED_UP]


async def user_relations(conn: asyncpg.Connection) -> int:
    """Tables, views and sequences outside the system schemas: 0 on an empty database."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'"
    )
    return count


async def row_counts(conn: asyncpg.Connection, names: list[str]) -> dict[str, int]:
    """The number of rows of each table in ``names``."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = await conn.fetchval(f"SELECT count(*) FROM {quote_ident(name)}")
    return counts


async def _tenant_column(conn: asyncpg.Connection, table: str) -> str | None:
    """The column naming a row's tenant: ``id`` of ``tenants``, else ``tenant_id``."""
    if table == "tenants":
        return "id"
    found = await conn.fetchval(
        "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) "
        "AND attname = 'tenant_id' AND NOT attisdropped", f"public.{quote_ident(table)}")
    return "tenant_id" if found else None


async def tenant_checksums(conn: asyncpg.Connection, names: list[str]) -> dict[str, str]:
    """A SHA-256 per tenant (hex) over its rows in every table of ``names``.

    Call inside a transaction after :func:`fix_text_forms`.
    """
    per_tenant: dict[str, list[str]] = {}
    for table in names:
        column = await _tenant_column(conn, table)
        if column is None:
            continue
        rows = await conn.fetch(
            f"SELECT {quote_ident(column)}::text AS tenant, encode(sha256(convert_to("
            f"string_agg(t::text, E'\\n' ORDER BY t::text COLLATE \"C\"), 'UTF8')), 'hex') "
            f"AS digest FROM {quote_ident(table)} t GROUP BY 1"
        )
        for row in rows:
            tenant = row["tenant"] if row["tenant"] is not None else NO_TENANT
            per_tenant.setdefault(tenant, []).append(f"{table}\t{row['digest']}")
    return {tenant: hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()
            for tenant, parts in sorted(per_tenant.items())}


async def attachment_objects(conn: asyncpg.Connection) -> list[StoredObject]:
    """Every attachment row's object, ready or still pending, by key."""
    rows = await conn.fetch(
        "SELECT object_key, mime, size, sha256, status = 'ready' AS ready FROM attachments "
        "ORDER BY object_key"
    )
    return [StoredObject(key=r["object_key"], mime=r["mime"], size=r["size"],
                         sha256=r["sha256"], ready=r["ready"]) for r in rows]
