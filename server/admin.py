"""The administrative commands of ``chat-storage``: migrate, retention, tenants, keys.

Each opens a one-connection pool (and, without DATABASE_URL, the embedded server),
does its work and closes them. Output goes to stdout through :func:`print_line`;
:mod:`server.cli` parses the command line and maps failures to exit statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from chat_storage.runtime import database, maintenance
from chat_storage.runtime.keys import open_keyring
from chat_storage.runtime.objects import store_from_settings
from chat_storage.runtime.settings import Settings
from chat_storage.server import cli_tenants
from chat_storage.storage import (
    apikeys,
    attachments,
    db,
    embedded,
    migrations,
    overrides,
    signing_keys,
    tenants,
)
from chat_storage.storage import retention as archives
from chat_storage.storage.errors import Conflict

PROG = "chat-storage"


async def open_pool(settings: Settings, *, migrate: bool = True) -> asyncpg.Pool:
    # one short-lived connection is all an admin command needs
    small = dataclasses.replace(settings, db_pool_min=1, db_pool_max=1)
    return await database.open_database(small, migrate=migrate)


async def close_pool(pool: asyncpg.Pool, settings: Settings) -> None:
    await database.close_pool(pool, settings.shutdown_timeout_s)
    if settings.embedded:
        await asyncio.to_thread(embedded.stop_all)


async def migrate(settings: Settings) -> int:
    # no seeding: on a fresh database the tables for CHAT_API_KEYS do not exist yet
    pool = await open_pool(dataclasses.replace(settings, api_keys=()), migrate=False)
    try:
        async with pool.acquire() as conn:
            applied = await migrations.migrate(conn, settings.migrations_dir)
            versions = await migrations.applied_versions(conn)
    finally:
        await close_pool(pool, settings)
    if applied:
        print_line("applied: " + ", ".join(f"{v:04d}" for v in applied))
    else:
        print_line("applied: none (already up to date)")
    print_line(f"schema version: {versions[-1]:04d}" if versions else "schema version: none")
    return 0


async def retention(settings: Settings) -> int:
    """Run the maintenance jobs once and print what they removed, as JSON."""
    pool = await open_pool(settings)
    try:
        store = await store_from_settings(settings)
        keyring = await open_keyring(settings)
        try:
            report = await maintenance.run_once(pool, store, settings, keyring=keyring)
        finally:
            await store.close()
            if keyring is not None:
                await keyring.close()
    finally:
        await close_pool(pool, settings)
    if report is None:
        print_error("another process is running maintenance right now; try again later")
        return 1
    print_json(dataclasses.asdict(report))
    return 0


async def with_connection(
    settings: Settings, command: Callable[[db.Connection], Awaitable[None]]
) -> int:
    pool = await open_pool(settings)
    try:
        async with pool.acquire() as conn:
            await command(conn)
    finally:
        await close_pool(pool, settings)
    return 0


async def tenants_create(args: argparse.Namespace, conn: db.Connection) -> None:
    tenant_id = await tenants.create_tenant(conn, args.name, args.retention_days)
    print_line(f"created tenant {args.name} ({tenant_id}), retention "
               f"{_retention(args.retention_days)}")


def _tenant_json(info: tenants.TenantInfo) -> dict[str, Any]:
    # a limit null: the server's setting applies
    return {"name": info.name, "id": str(info.id), "retention_days": info.retention_days,
            "sessions": info.sessions, "active_keys": info.active_keys,
            "created_at": info.created_at, **_limits_json(info.limits),
            "oidc_issuer": info.oidc_issuer, "oidc_audience": info.oidc_audience,
            "oidc_user_claim": info.oidc_user_claim, "cors_origins": list(info.cors_origins),
            **cli_tenants.to_json(info)}


def _limits_json(limits: overrides.Limits) -> dict[str, Any]:
    return {"rate_limit_per_s": limits.rate_limit_per_s,
            "rate_limit_burst": limits.rate_limit_burst,
            "max_stream_connections": limits.max_stream_connections}


async def tenants_list(args: argparse.Namespace, conn: db.Connection) -> None:
    found = await tenants.list_tenants(conn)
    if args.json:
        print_json([_tenant_json(t) for t in found])
        return
    print_table(("NAME", "ID", "RETENTION", "PII", "SESSIONS", "KEYS", "CREATED"), [
        (t.name, str(t.id), _retention(t.retention_days),
         "redacted" if t.redact_pii else "-", str(t.sessions),
         str(t.active_keys), when(t.created_at))
        for t in found
    ])


async def tenants_show(args: argparse.Namespace, conn: db.Connection) -> None:
    info = await tenants.get_tenant(conn, args.name)
    if args.json:
        print_json(_tenant_json(info))
        return
    print_table(("FIELD", "VALUE"), [
        ("name", info.name), ("id", str(info.id)),
        ("retention", _retention(info.retention_days)), ("sessions", str(info.sessions)),
        ("active keys", str(info.active_keys)), ("created", when(info.created_at)),
        ("rate limit", _rate(info.limits.rate_limit_per_s, "setting")),
        ("rate limit burst", _limit(info.limits.rate_limit_burst, "setting")),
        ("max stream connections", _limit(info.limits.max_stream_connections, "setting")),
        ("OIDC issuer", info.oidc_issuer or "none"),
        ("OIDC audience", info.oidc_audience or "-"),
        ("OIDC user claim", info.oidc_user_claim),
        ("CORS origins", ", ".join(info.cors_origins) or "CHAT_CORS_ORIGINS only"),
        *cli_tenants.rows(info),
    ])


async def tenants_update(args: argparse.Namespace, conn: db.Connection) -> None:
    info = await tenants.update_tenant(
        conn, args.name, retention_days=args.retention_days,
        rate_limit_per_s=args.rate_limit_per_s, rate_limit_burst=args.rate_limit_burst,
        max_stream_connections=args.max_stream_connections, oidc_issuer=args.oidc_issuer,
        oidc_audience=args.oidc_audience, oidc_user_claim=args.oidc_user_claim,
        cors_origins=args.cors_origins, **cli_tenants.updates(args))
    limits = info.limits
    print_line(f"updated tenant {info.name}: retention {_retention(info.retention_days)}, "
               f"rate limit {_rate(limits.rate_limit_per_s, 'setting')}, "
               f"burst {_limit(limits.rate_limit_burst, 'setting')}, "
               f"max stream connections {_limit(limits.max_stream_connections, 'setting')}, "
               f"OIDC issuer {info.oidc_issuer or 'none'}, "
               f"CORS origins {', '.join(info.cors_origins) or 'CHAT_CORS_ORIGINS only'}, "
               f"{cli_tenants.summary(info)}")


async def tenants_rotate_signing_key(args: argparse.Namespace, conn: db.Connection) -> None:
    retired = await signing_keys.rotate(conn, args.name)
    if retired is None:
        print_line(f"tenant {args.name} had no signing key (no token minted yet); "
                   "nothing to retire")
        return
    print_line(f"retired signing key {retired} of tenant {args.name}: tokens it signed stop "
               "working (on every server within CHAT_API_KEY_CACHE_S seconds); the next "
               "token minted makes a new key")


async def tenants_delete(settings: Settings, args: argparse.Namespace) -> int:
    """Delete a tenant; with ``--force`` also its sessions, messages and stored files."""
    pool = await open_pool(settings)
    try:
        async with pool.acquire() as conn:
            try:
                info = await tenants.delete_tenant(conn, args.name, force=args.force)
            except tenants.TenantNotEmpty as exc:
                raise Conflict(f"{exc}: not deleted; `{PROG} tenants delete {args.name} "
                               "--force` deletes them with it") from None
        # the rows are gone (committed): now their files, attachments and archives
        store = await store_from_settings(settings)
        try:
            prefixes = (attachments.tenant_prefix(info.id), archives.tenant_prefix(info.id))
            for prefix in prefixes:
                await store.delete(await store.list_keys(prefix))
        finally:
            await store.close()
    finally:
        await close_pool(pool, settings)
    print_line(f"deleted tenant {info.name} with its keys and {info.sessions} session(s)")
    return 0


async def keys_create(args: argparse.Namespace, conn: db.Connection) -> None:
    limits = overrides.Limits(args.rate_limit_per_s, args.rate_limit_burst)
    created = await apikeys.create_key(conn, args.tenant, name=args.name or "",
                                       scope=args.scope, limits=limits)
    if args.json:
        print_json({"id": created.id, "tenant": created.tenant, "scope": created.scope,
                    "rate_limit_per_s": limits.rate_limit_per_s,
                    "rate_limit_burst": limits.rate_limit_burst, "key": created.key})
        return
    print_line(created.key)
    print(f"created {created.scope} key {created.id} for tenant {created.tenant}; "
          "it is shown only this once", file=sys.stderr)


async def keys_revoke(args: argparse.Namespace, conn: db.Connection) -> None:
    key_id = await apikeys.revoke_key(conn, args.id)
    print_line(f"revoked key {key_id}")


async def keys_list(args: argparse.Namespace, conn: db.Connection) -> None:
    keys = await apikeys.list_keys(conn, args.tenant)
    if args.json:
        print_json([
            {"id": k["id"], "name": k["name"], "scope": k["scope"],
             "rate_limit_per_s": k["rate_limit_per_s"], "rate_limit_burst": k["rate_limit_burst"],
             "created_at": k["created_at"], "revoked_at": k["revoked_at"]}
            for k in keys
        ])
        return
    # a key without its own limit has its tenant's, else the setting
    print_table(("ID", "NAME", "SCOPE", "RATE", "BURST", "CREATED", "REVOKED"), [
        (k["id"], k["name"] or "-", k["scope"], _rate(k["rate_limit_per_s"], "tenant"),
         _limit(k["rate_limit_burst"], "tenant"), when(k["created_at"]),
         when(k["revoked_at"]))
        for k in keys
    ])


def print_table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell, the header first."""
    rows = [header, *body]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print_line("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                   .rstrip())


def _retention(days: int | None) -> str:
    return "forever" if days is None else f"{days} days"


def _rate(per_s: float | None, otherwise: str) -> str:
    return otherwise if per_s is None else f"{per_s:g}/s"


def _limit(value: int | None, otherwise: str) -> str:
    return otherwise if value is None else str(value)


def when(value: dt.datetime | None) -> str:
    """A time as the tables print it (UTC, seconds), ``-`` for none."""
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def compact_json(value: Any) -> str:
    """``value`` as one line of JSON (``-`` when empty)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode() if value else "-"


def print_error(message: str) -> None:
    """``chat-storage: error: <message>`` on stderr: how every failure is reported."""
    print(f"{PROG}: error: {message}", file=sys.stderr)


def print_line(text: str) -> None:
    print(text, flush=True)


def print_json(value: Any) -> None:
    print_line(orjson.dumps(value, option=orjson.OPT_UTC_Z).decode())
