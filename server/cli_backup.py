"""``chat-storage backup`` and ``chat-storage restore``: their flags, and their outcome.

The work is :mod:`runtime.backup` and :mod:`runtime.restore`; this module adds the
two commands to the parser of :mod:`server.cli` and prints a JSON report on stdout
(failures: one line on stderr, exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

from chat_storage.runtime.backup import BackupError, BackupReport, backup
from chat_storage.runtime.manifest import ManifestError
from chat_storage.runtime.restore import RestoreError, RestoreReport, restore
from chat_storage.runtime.settings import Settings
from chat_storage.server.admin import print_error, print_json
from chat_storage.storage import embedded

COMMANDS = ("backup", "restore")


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``backup --to`` and ``restore --from`` to the parser's commands."""
    backup_cmd = commands.add_parser(
        "backup", help="copy the database (one consistent snapshot), the attachment files "
        "and a manifest to a new directory or s3://bucket/prefix")
    backup_cmd.add_argument("--to", required=True, metavar="DIR|s3://BUCKET/PREFIX",
                            dest="location", help="where the backup goes (must hold none)")
    restore_cmd = commands.add_parser(
        "restore", help="load a backup into the empty database of DATABASE_URL and its "
        "files into the object store; checks the manifest's counts and checksums")
    restore_cmd.add_argument("--from", required=True, metavar="DIR|s3://BUCKET/PREFIX",
                             dest="location", help="the backup to restore")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``backup`` or ``restore``; the exit status."""
    try:
        report = asyncio.run(_run(settings, args))
    except (BackupError, RestoreError, ManifestError) as exc:
        print_error(str(exc))
        return 1
    print_json(dataclasses.asdict(report))
    return 0


async def _run(settings: Settings, args: argparse.Namespace) -> BackupReport | RestoreReport:
    try:
        if args.command == "backup":
            return await backup(settings, args.location)
        return await restore(settings, args.location)
    finally:
        if settings.embedded:
            await asyncio.to_thread(embedded.stop_all)
