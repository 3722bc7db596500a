"""The command line of encryption at rest (docs/security.md): ``tenants update T
--encryption on|off`` and ``keys rotate-kek``."""

from __future__ import annotations

import argparse
from typing import Any

from chat_storage.runtime.keys import kek_from_url
from chat_storage.runtime.settings import Settings, SettingsError
from chat_storage.server import admin
from chat_storage.storage import db
from chat_storage.storage.crypto.keyring import keys_not_under, rewrap
from chat_storage.storage.crypto.switch import set_encryption
from chat_storage.storage.errors import Conflict


def add_encryption_flag(update_tenant: argparse.ArgumentParser) -> None:
    """``--encryption on|off`` on ``tenants update``."""
    update_tenant.add_argument(
        "--encryption", choices=("on", "off"), default=None,
        help="store its new messages' content, context and metadata encrypted under a "
             "key per user (needs CHAT_ENCRYPTION_KEK); full-text search is then off")


def add_rotate_command(keys_sub: Any) -> None:
    """``keys rotate-kek``: re-wrap every data key under the current KEK."""
    keys_sub.add_parser(
        "rotate-kek", help="re-wrap every data key from CHAT_ENCRYPTION_KEK_PREVIOUS to "
        "CHAT_ENCRYPTION_KEK (no message is rewritten; a stopped run resumes)")


async def update_encryption(settings: Settings, args: argparse.Namespace,
                            conn: db.Connection) -> None:
    """Apply ``--encryption`` (before the other changes of the same command)."""
    on = args.encryption == "on"
    if on and settings.encryption_kek is None:
        raise SettingsError("--encryption on needs CHAT_ENCRYPTION_KEK (docs/security.md)")
    changed = await set_encryption(conn, args.name, on)
    state = "on" if on else "off"
    admin.print_line(f"tenant {args.name}: encryption {state}"
                     + ("" if changed else " already"))


async def rotate_kek(settings: Settings, conn: db.Connection) -> None:
    """Re-wrap the data keys from the previous KEK to the current one."""
    if settings.encryption_kek is None or settings.encryption_kek_previous is None:
        raise SettingsError("keys rotate-kek needs CHAT_ENCRYPTION_KEK (the new KEK) and "
                         "CHAT_ENCRYPTION_KEK_PREVIOUS (the one being retired)")
    old = await kek_from_url(settings, settings.encryption_kek_previous)
    new = await kek_from_url(settings, settings.encryption_kek)
    try:
        done = await rewrap(conn, old, new)
        left = await keys_not_under(conn, new)
    finally:
        await old.close()
        await new.close()
    if left:
        raise Conflict(f"re-wrapped {done} data key(s) under {new.id}, but {left} are wrapped "
                       "by a KEK that is neither: keep every KEK they name")
    admin.print_line(f"re-wrapped {done} data key(s) under {new.id}; every key is under it "
                     "now, and the previous KEK can be retired")
