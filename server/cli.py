"""The ``chat-storage`` command: ``serve``, and the admin commands of :mod:`server.admin`.

Every subcommand builds :class:`Settings` from the environment and its flags. Exit
statuses: 0 done, 1 the operation failed (no such tenant, database unreachable, ...),
2 bad usage or a bad setting. Failures are one line on stderr, never a traceback.
Secrets (new API keys) go to stdout exactly once; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from chat_storage.server import admin, database, logs
from chat_storage.server.settings import Settings, SettingsError
from chat_storage.storage import db, embedded, tenants
from chat_storage.storage.errors import Conflict, StorageError

if TYPE_CHECKING:  # the write path is only imported to serve
    from chat_storage.actors.write.shared import SinkFactory

log = logging.getLogger(__name__)

PROG = "chat-storage"
DEV_TENANT = "dev"


class UsageError(Exception):
    """A combination of flags and settings this version cannot run (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            workers=getattr(args, "workers", None),
        )
        if args.command == "serve":
            return serve(settings)
        logs.configure("WARNING")
        if args.command == "migrate":
            return asyncio.run(admin.migrate(settings))
        if args.command == "retention":
            return asyncio.run(admin.retention(settings))
        command: Callable[[db.Connection], Awaitable[None]] = functools.partial(
            args.handler, args
        )
        return asyncio.run(admin.with_connection(settings, command))
    except (SettingsError, UsageError) as exc:
        _fail(str(exc))
        return 2
    except (StorageError, asyncpg.PostgresError, OSError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 1


def _fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


# -- serve --------------------------------------------------------------------------------


def serve(settings: Settings, *, reuse_port: bool = False,
          sink: SinkFactory | None = None) -> int:
    """Run the HTTP server until SIGTERM or SIGINT, then shut down gracefully.

    ``reuse_port``: listen with SO_REUSEPORT (a worker of ``--workers N``). ``sink``:
    what commits the session mailboxes' batches (default: the shared committer;
    ``loadtest/serve_direct.py`` swaps it).
    """
    if settings.workers > 1:
        if settings.redis_url is None:
            raise UsageError(
                f"--workers {settings.workers} needs REDIS_URL: worker processes "
                "coordinate through Redis"
            )
        from chat_storage.server import workers  # the parent of N worker processes

        return workers.run(settings)
    logs.configure(settings.log_level)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(settings, reuse_port, sink))


# Python's default (700, 10, 10) collects the young generation every few requests
# and the whole heap often enough that its pauses set the write path's p99.
GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    """Once started: move what start-up made (modules, app, pool) out of the collector's
    way (``gc.freeze``) and collect less often.

    Measured with ``loadtest/bench_writes.py --modes http-quiet`` (64 writers): p99
    from 54-60 ms to 28-29 ms, server CPU per request 10-20% lower. Reference cycles
    are still collected, only in larger steps.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _serve(settings: Settings, reuse_port: bool = False,
                 sink: SinkFactory | None = None) -> int:
    from chat_storage.server.app import create_app  # the whole app is only needed to serve

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    main_task = asyncio.current_task()
    assert main_task is not None

    def on_signal(sig: signal.Signals) -> None:
        # a signal only sets the event; a second one gives up on the graceful path
        if stopping.is_set():
            log.warning("second signal: exiting now", extra={"signal": sig.name})
            main_task.cancel()
            return
        log.info("shutdown requested", extra={"signal": sig.name})
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    runner = web.AppRunner(
        create_app(settings, sink=sink), access_log=None,
        shutdown_timeout=settings.shutdown_timeout_s
    )
    code = 0
    try:
        log.info("starting", extra={"embedded_db": settings.embedded})
        try:
            await runner.setup()  # the app's start-up: database, migrations, registry
            await web.TCPSite(runner, settings.host, settings.port,
                              reuse_port=reuse_port).start()
            log.info("listening", extra={"host": settings.host, "port": settings.port})
            tune_gc()
            if settings.embedded:
                await _first_run_key(runner.app, settings)
        except (StorageError, asyncpg.PostgresError, OSError) as exc:
            _fail(f"cannot start: {exc}".splitlines()[0])
            code = 1
        else:
            await stopping.wait()
            log.info("shutdown: closing listeners, finishing in-flight requests",
                     extra={"timeout_s": settings.shutdown_timeout_s})
        # stop sites, app shutdown, then each cleanup_ctx in reverse (registry, then pool)
        await runner.cleanup()
        log.info("shutdown: app stopped, database pool closed")
    except asyncio.CancelledError:
        # only our own second-signal handler cancels this task: it means "exit now"
        log.warning("shutdown: forced by a second signal; in-flight work may be lost")
        code = 1
    finally:
        if settings.embedded:
            await asyncio.to_thread(embedded.stop_all)
            log.info("shutdown: embedded postgres stopped (unless another process uses it)")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("shutdown complete", extra={"exit_status": code})
    return code


async def _first_run_key(app: web.Application, settings: Settings) -> None:
    """On a fresh embedded database, create tenant ``dev`` and print its key once."""
    pool = app[database.POOL_KEY]
    async with pool.acquire() as conn:
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants)"):
            return
        try:
            async with conn.transaction():  # a tenant without its key would help no one
                await tenants.create_tenant(conn, DEV_TENANT)
                created = await tenants.create_key(conn, DEV_TENANT, name="first run")
        except Conflict:
            return  # another process sharing the data directory got there first
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{settings.port}/api/v1/sessions"
    admin.print_line(
        f"Created tenant {DEV_TENANT!r} and an API key (shown only this once):\n"
        f"  {created.key}\n"
        "Try it:\n"
        f"  curl -H 'X-Api-Key: {created.key}' -H 'Content-Type: application/json' "
        f"""-d '{{"user_id":"me"}}' {url}"""
    )


# -- the parser ---------------------------------------------------------------------------


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be greater than 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Durable, live-streaming conversation storage for RAG chat apps. "
        "Settings come from the environment (see .env.example); flags win.",
    )
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

    tenants_cmd = commands.add_parser("tenants", help="manage tenants")
    tenants_sub = tenants_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    create_tenant = tenants_sub.add_parser("create", help="create a tenant")
    create_tenant.add_argument("name")
    create_tenant.add_argument("--retention-days", type=_positive_int, metavar="N",
                               help="erase its messages N days after they are written")
    create_tenant.set_defaults(handler=admin.tenants_create)

    keys_cmd = commands.add_parser("keys", help="manage API keys")
    keys_sub = keys_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    create_key = keys_sub.add_parser("create", help="create a key; it is printed only once")
    create_key.add_argument("--tenant", required=True, metavar="NAME")
    create_key.add_argument("--name", default="", metavar="LABEL", help="a label for the key")
    create_key.add_argument("--json", action="store_true",
                            help='print one line {"id", "tenant", "key"}')
    create_key.set_defaults(handler=admin.keys_create)
    revoke_key = keys_sub.add_parser("revoke", help="revoke a key")
    revoke_key.add_argument("id", metavar="ID")
    revoke_key.set_defaults(handler=admin.keys_revoke)
    list_keys = keys_sub.add_parser("list", help="list the keys of a tenant (never secrets)")
    list_keys.add_argument("--tenant", required=True, metavar="NAME")
    list_keys.add_argument("--json", action="store_true", help="print a JSON array")
    list_keys.set_defaults(handler=admin.keys_list)
    return parser


if __name__ == "__main__":
    sys.exit(main())
