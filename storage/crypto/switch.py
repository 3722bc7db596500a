"""Turning a tenant's encryption on or off (``tenants update T --encryption on|off``)."""

from __future__ import annotations

import asyncpg

from chat_storage.storage.audit_log import audit
from chat_storage.storage.errors import NotFound, StorageError


class EncryptionNotConfigured(StorageError):
    """Tenants have encryption on, and this process has no KEK: it would store their
    new content in plain text, so it does not start."""


async def set_encryption(conn: asyncpg.Connection, tenant: str, on: bool) -> bool:
    """Seal new content of tenant ``tenant`` (``on``) or store it plain again; audited.

    What is stored already stays as it is: rows sealed before ``off`` still open, rows
    written plain before ``on`` stay plain until they are deleted (docs/security.md).
    Writers see the change within ``CHAT_DATA_KEY_CACHE_S``. Returns whether it changed.
    """
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT id, encrypted FROM tenants WHERE name = $1 FOR UPDATE", tenant)
        if row is None:
            raise NotFound(f"tenant {tenant!r} does not exist")
        if row["encrypted"] == on:
            return False
        await conn.execute("UPDATE tenants SET encrypted = $2 WHERE id = $1", row["id"], on)
        await audit(conn, row["id"], "cli", "tenant.encryption", tenant, {"encrypted": on})
    return True


async def encrypted_tenants(conn: asyncpg.Connection) -> list[str]:
    """The names of the tenants whose new content is sealed."""
    return [r["name"] for r in await conn.fetch(
        "SELECT name FROM tenants WHERE encrypted ORDER BY name")]


async def check_configured(conn: asyncpg.Connection, has_kek: bool) -> None:
    """:class:`EncryptionNotConfigured` if tenants have encryption on and ``not has_kek``."""
    if has_kek:
        return
    names = await encrypted_tenants(conn)
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise EncryptionNotConfigured(
            f"tenant(s) {shown} have encryption on and CHAT_ENCRYPTION_KEK is not set: "
            "their new messages would be stored in plain text (docs/security.md)")
