"""The ``chat-storage`` command: ``serve``, and the admin commands of :mod:`server.admin`.

Every subcommand builds :class:`Settings` from the environment and its flags. Exit
statuses: 0 done, 1 the operation failed (no such tenant, database unreachable, ...),
2 bad usage or a bad setting. Failures are one line on stderr, never a traceback.
Secrets (new API keys) go to stdout exactly once; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import functools
import math
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from importlib import metadata

import asyncpg

from chat_storage.runtime.settings import (
    DEFAULT_DATA_DIR,
    LEGACY_DATA_DIR,
    Settings,
    SettingsError,
)
from chat_storage.server import (
    admin,
    cli_access,
    cli_audit,
    cli_backup,
    cli_keys,
    cli_tenants,
    logs,
    serving,
    workers,
)
from chat_storage.server.admin import PROG
from chat_storage.storage import db, principal, tenants
from chat_storage.storage.errors import StorageError


class UsageError(Exception):
    """A combination of flags and settings this version cannot run (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "tenants" and args.action == "update":
        _check_tenant_update(parser, args)
    try:
        settings = Settings.from_env(
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            workers=getattr(args, "workers", None),
        )
        if settings.embedded:
            _note_legacy_data_dir(settings)
        if args.command == "serve":
            return serve(settings)
        logs.configure("WARNING")
        if args.command == "tenants" and args.action == "create" and (
                args.retention_days is tenants.UNCHANGED):
            args.retention_days = settings.new_tenant_retention  # CHAT_DEFAULT_RETENTION_DAYS
        if args.command in cli_backup.COMMANDS:
            return cli_backup.run(settings, args)
        if args.command == "migrate":
            return asyncio.run(admin.migrate(settings))
        if args.command == "retention":
            return asyncio.run(admin.retention(settings))
        if args.command == "keys" and args.action == "rotate-kek":
            return asyncio.run(admin.with_connection(
                settings, functools.partial(cli_keys.rotate_kek, settings)))
        if args.command == "tenants" and args.action == "update" and args.encryption:
            asyncio.run(admin.with_connection(
                settings, functools.partial(cli_keys.update_encryption, settings, args)))
            if args.only_encryption:
                return 0
        if args.command == "tenants" and args.action == "delete":
            return asyncio.run(admin.tenants_delete(settings, args))  # files too: the store
        command: Callable[[db.Connection], Awaitable[None]] = functools.partial(
            args.handler, args
        )
        return asyncio.run(admin.with_connection(settings, command))
    except (SettingsError, UsageError) as exc:
        admin.print_error(str(exc))
        return 2
    except (StorageError, asyncpg.PostgresError, OSError) as exc:
        admin.print_error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 1


def _check_tenant_update(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolve ``--clear-rate-limit``; exit 2 when nothing would change."""
    if args.clear_rate_limit:
        for dest, flag in (("rate_limit_per_s", "--rate-limit-per-s"),
                           ("rate_limit_burst", "--rate-limit-burst")):
            if getattr(args, dest) is not tenants.UNCHANGED:
                parser.error(f"--clear-rate-limit: not allowed with {flag} or its --clear-…")
            setattr(args, dest, None)
    cli_access.resolve_update_flags(parser, args, tenants.UNCHANGED)
    cli_tenants.resolve_update_flags(parser, args)
    args.only_encryption = all(
        getattr(args, dest) is tenants.UNCHANGED
        for dest in TENANT_UPDATES + cli_access.ACCESS_UPDATES + cli_tenants.DATA_UPDATES)
    if args.only_encryption and args.encryption is None:
        parser.error("nothing to change: give --retention-days N or --no-retention, "
                     "--rate-limit-per-s R, --rate-limit-burst B, --max-stream-connections N "
                     "or one of their --clear-… flags, --oidc-…, --cors-origins, "
                     "--redact-pii on|off, --pii-pattern or --encryption on|off")


def _note_legacy_data_dir(settings: Settings) -> None:
    """Say so when a data directory of an earlier version is here but not used."""
    if settings.data_dir == DEFAULT_DATA_DIR and (LEGACY_DATA_DIR / "pg").is_dir():
        print(f"{PROG}: note: ./{LEGACY_DATA_DIR} (the data directory of earlier versions) "
              f"is not used any more; CHAT_DATA_DIR={LEGACY_DATA_DIR} keeps using it",
              file=sys.stderr, flush=True)


# -- serve --------------------------------------------------------------------------------


def serve(settings: Settings) -> int:
    """Run the HTTP server until SIGTERM or SIGINT, then shut down gracefully:
    this process, or with ``--workers N`` a parent of N worker processes.

    A port in use is reported before any database work (starting the embedded
    Postgres takes seconds, and its failure would hide the real problem).
    """
    check_port_free(settings.host, settings.port)
    if settings.embedded:
        print(f"{PROG}: using the embedded PostgreSQL in {settings.data_dir.resolve()} "
              "(CHAT_DATA_DIR moves it; DATABASE_URL uses your own server)",
              file=sys.stderr, flush=True)
    if settings.workers > 1:
        if settings.redis_url is None:
            raise UsageError(
                f"--workers {settings.workers} needs REDIS_URL: worker processes "
                "coordinate through Redis"
            )
        return workers.run(settings)
    return serving.serve_one(settings)


def check_port_free(host: str, port: int) -> None:
    """:class:`PortInUse` if ``host:port`` cannot be listened on because it is taken.

    Binds as the server will (``SO_REUSEADDR``, as asyncio does) and lets go at once;
    other bind failures (a bad host) are left for the server to report.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError:
        return
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(
                        f"cannot listen on {host}:{port}: address already in use (is "
                        "another server running there? choose another with --port)"
                    ) from None


class PortInUse(OSError):
    """The port ``serve`` was asked to listen on is taken (exit status 1)."""


# -- the parser ---------------------------------------------------------------------------


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be greater than 0")
    return value


def _positive_rate(raw: str) -> float:
    """Requests per second: a finite number greater than 0 (``0.5``: one every 2 s)."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be a number greater than 0")
    return value


def _name(raw: str) -> str:
    """A tenant or key name: not empty, not only blanks."""
    if not raw.strip():
        raise argparse.ArgumentTypeError("must not be empty or blank")
    return raw


def _version() -> str:
    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


# what `tenants update` changes; at least one must be given
TENANT_UPDATES = ("retention_days", "rate_limit_per_s", "rate_limit_burst",
                  "max_stream_connections")


def _limit_flags(parser: argparse.ArgumentParser, whose: str, *, clearable: bool) -> None:
    """``--rate-limit-per-s`` and ``--rate-limit-burst`` (with ``clearable``, each with its
    ``--clear-…`` and ``--clear-rate-limit`` for both)."""
    rate_help = (f"requests per second for {whose} (a key's own wins over its tenant's; "
                 "default: CHAT_RATE_LIMIT_PER_S)")
    burst_help = (f"requests {whose} may make at once (a key's own wins over its tenant's; "
                  "default: CHAT_RATE_LIMIT_BURST)")
    if not clearable:
        parser.add_argument("--rate-limit-per-s", type=_positive_rate, metavar="R",
                            help=rate_help)
        parser.add_argument("--rate-limit-burst", type=_positive_int, metavar="B",
                            help=burst_help)
        return
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--rate-limit-per-s", type=_positive_rate, metavar="R", help=rate_help)
    rate.add_argument("--clear-rate-limit-per-s", dest="rate_limit_per_s",
                      action="store_const", const=None, help="back to the setting")
    burst = parser.add_mutually_exclusive_group()
    burst.add_argument("--rate-limit-burst", type=_positive_int, metavar="B", help=burst_help)
    burst.add_argument("--clear-rate-limit-burst", dest="rate_limit_burst",
                       action="store_const", const=None, help="back to the setting")
    parser.add_argument("--clear-rate-limit", action="store_true",
                        help="rate and burst both back to the settings")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Durable, live-streaming conversation storage for RAG chat apps. "
        "Settings come from the environment (see .env.example); flags win.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_cmd = commands.add_parser("serve", help="run the HTTP/WebSocket server")
    serve_cmd.add_argument("--host", help="address to listen on (CHAT_HOST)")
    serve_cmd.add_argument("--port", type=_positive_int, help="port to listen on (CHAT_PORT)")
    serve_cmd.add_argument("--workers", type=_positive_int, metavar="N",
                           help="worker processes (CHAT_WORKERS); more than 1 needs REDIS_URL")

    commands.add_parser("migrate", help="apply pending database migrations")
    commands.add_parser(
        "retention", help="archive and delete what is past retention, erase expired "
        "temporary chats and stale uploads, now (serve does it every "
        "CHAT_MAINTENANCE_INTERVAL_S)")

    cli_backup.add_commands(commands)

    tenants_cmd = commands.add_parser("tenants", help="manage tenants")
    tenants_sub = tenants_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    create_tenant = tenants_sub.add_parser("create", help="create a tenant")
    create_tenant.add_argument("name", type=_name)
    create_retention = create_tenant.add_mutually_exclusive_group()
    create_retention.add_argument(
        "--retention-days", type=_positive_int, metavar="N",
        help="erase its messages N days after they are written (default: "
             "CHAT_DEFAULT_RETENTION_DAYS, 90)")
    create_retention.add_argument("--no-retention", dest="retention_days",
                                  action="store_const", const=None,
                                  help="keep its messages until they are deleted")
    create_tenant.set_defaults(handler=admin.tenants_create, retention_days=tenants.UNCHANGED)
    list_tenants = tenants_sub.add_parser("list", help="list the tenants")
    list_tenants.add_argument("--json", action="store_true", help="print a JSON array")
    list_tenants.set_defaults(handler=admin.tenants_list)
    show_tenant = tenants_sub.add_parser("show", help="show a tenant")
    show_tenant.add_argument("name", type=_name)
    show_tenant.add_argument("--json", action="store_true", help="print a JSON object")
    show_tenant.set_defaults(handler=admin.tenants_show)
    update_tenant = tenants_sub.add_parser(
        "update", help="change a tenant's retention, limits, trusted OIDC issuer, CORS "
        "origins and PII redaction (what is not given stays; every change is audited)")
    update_tenant.add_argument("name", type=_name)
    retention = update_tenant.add_mutually_exclusive_group()
    retention.add_argument("--retention-days", type=_positive_int, metavar="N",
                           help="erase its messages N days after they are written")
    retention.add_argument("--no-retention", dest="retention_days", action="store_const",
                           const=None, help="keep its messages until they are deleted")
    _limit_flags(update_tenant, "each of its keys", clearable=True)
    cap = update_tenant.add_mutually_exclusive_group()
    cap.add_argument("--max-stream-connections", type=_positive_int, metavar="N",
                     help="WebSocket and event-stream connections open at once, per server "
                          "process (default: CHAT_WS_MAX_CONNECTIONS_PER_TENANT)")
    cap.add_argument("--clear-max-stream-connections", dest="max_stream_connections",
                     action="store_const", const=None, help="back to the setting")
    cli_access.add_update_flags(update_tenant)
    cli_tenants.add_update_flags(update_tenant)
    cli_keys.add_encryption_flag(update_tenant)
    update_tenant.set_defaults(handler=admin.tenants_update, **dict.fromkeys(
        TENANT_UPDATES, tenants.UNCHANGED))
    cli_access.add_rotate_command(tenants_sub, admin.tenants_rotate_signing_key)
    delete_tenant = tenants_sub.add_parser(
        "delete", help="delete a tenant and its keys; refused while it has sessions "
        "unless --force")
    delete_tenant.add_argument("name", type=_name)
    delete_tenant.add_argument("--force", action="store_true",
                               help="also delete its sessions, messages and files")

    cli_audit.add_command(commands)

    keys_cmd = commands.add_parser("keys", help="manage API keys")
    keys_sub = keys_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    create_key = keys_sub.add_parser("create", help="create a key; it is printed only once")
    create_key.add_argument("--tenant", required=True, metavar="NAME", type=_name)
    create_key.add_argument("--name", default=None, metavar="LABEL", type=_name,
                            help="a label for the key (not blank)")
    create_key.add_argument(
        "--scope", choices=principal.SCOPES, default=principal.DEFAULT_SCOPE,
        help="what the key reaches: admin everything of its tenant, write every session "
        "and message but not user erasure, read only GET routes (default: %(default)s)")
    _limit_flags(create_key, "this key", clearable=False)
    create_key.add_argument("--json", action="store_true",
                            help='print one line {"id", "tenant", "scope", "key"}')
    create_key.set_defaults(handler=admin.keys_create)
    revoke_key = keys_sub.add_parser("revoke", help="revoke a key")
    revoke_key.add_argument("id", metavar="ID_OR_KEY", type=_name,
                            help="the key's id (keys list) or the whole key")
    revoke_key.set_defaults(handler=admin.keys_revoke)
    list_keys = keys_sub.add_parser("list", help="list the keys of a tenant (never secrets)")
    list_keys.add_argument("--tenant", required=True, metavar="NAME", type=_name)
    list_keys.add_argument("--json", action="store_true", help="print a JSON array")
    list_keys.set_defaults(handler=admin.keys_list)
    cli_keys.add_rotate_command(keys_sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
