"""``chat-storage audit --tenant T [--since WHEN] [--json]``: read a tenant's audit log.

What is recorded (docs/privacy.md, "Audit log"): tenant and key changes (``cli``),
session create, rename, delete and export, message deletion, user erasure and export,
tokens minted (actor ``key:<id>`` or ``user:<id>``), retention's archives and expiries,
and failed authentications (at most one per client address and reason a minute, per
server process). Records never hold message content or secrets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from typing import Any

from chat_storage.server import admin
from chat_storage.storage import audit_log, db, tenants

_AGO = re.compile(r"(\d{1,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since(raw: str) -> dt.datetime:
    """``2026-12-01``, ``2026-12-01T10:00:00Z`` (UTC when no offset), or an age: ``30m``,
    ``12h``, ``7d``."""
    ago = _AGO.fullmatch(raw.strip())
    if ago:
        return dt.datetime.now(dt.UTC) - dt.timedelta(
            seconds=int(ago.group(1)) * _UNIT_S[ago.group(2)])
    try:
        when = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r}: give a date, a time (2026-12-01T10:00:00Z) or an age (12h, 7d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def add_command(commands: Any) -> None:
    """``audit``."""
    cmd = commands.add_parser(
        "audit", help="print a tenant's audit records (who changed or read what), oldest first")
    whose = cmd.add_mutually_exclusive_group(required=True)
    whose.add_argument("--tenant", metavar="NAME", help="the tenant whose records to print")
    whose.add_argument("--unattributed", action="store_true",
                       help="the records of no tenant: failed authentications of unknown "
                            "keys and tokens")
    cmd.add_argument("--since", type=since, metavar="WHEN",
                     help="only records from then on: a date, a time or an age (12h, 7d)")
    cmd.add_argument("--limit", type=int, default=1000, metavar="N",
                     help="at most the newest N records (default: %(default)s)")
    cmd.add_argument("--json", action="store_true", help="one JSON object per line")
    cmd.set_defaults(handler=show)


async def show(args: argparse.Namespace, conn: db.Connection) -> None:
    """Print the records asked for."""
    tenant_id = None if args.unattributed else await tenants.tenant_id_by_name(
        conn, args.tenant)
    records = await audit_log.audit_records(conn, tenant_id, args.since,
                                            limit=max(1, args.limit))
    if args.json:
        for r in records:
            admin.print_json({"at": r["created_at"], "actor": r["actor"],
                              "action": r["action"], "target": r["target"],
                              "details": r["details"], "request_id": r["request_id"]})
        return
    admin.print_table(("AT", "ACTOR", "ACTION", "TARGET", "REQUEST", "DETAILS"), [
        (admin.when(r["created_at"]), r["actor"], r["action"], r["target"] or "-",
         r["request_id"] or "-", admin.compact_json(r["details"]))
        for r in records
    ])
