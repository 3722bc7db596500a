"""One server process: the app on its socket until SIGTERM or SIGINT, then a graceful
shutdown (``chat-storage serve``, and each worker of ``serve --workers N``).

Both :mod:`server.cli` and :mod:`server.workers` start servers through this module,
which imports neither of them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from importlib.metadata import version
from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from chat_storage import tracing
from chat_storage.runtime.settings import DEV_TENANT, Settings
from chat_storage.server import admin, connlimits, logs, protocol
from chat_storage.server.state import POOL_KEY
from chat_storage.storage import apikeys, embedded, tenants
from chat_storage.storage.errors import Conflict, StorageError

if TYPE_CHECKING:  # the write path is only imported to serve
    from chat_storage.actors.write.shared import SinkFactory

log = logging.getLogger(__name__)



def serve_one(settings: Settings, *, reuse_port: bool = False,
              sink: SinkFactory | None = None) -> int:
    """Serve in this process until SIGTERM or SIGINT, then shut down gracefully.

    ``reuse_port``: listen with SO_REUSEPORT (a worker of ``--workers N``). ``sink``:
    what commits the session mailboxes' batches (default: the shared committer;
    ``loadtest/serve_direct.py`` swaps it).
    """
    logs.configure(settings.log_level)
    if settings.tracing:
        tracing.configure(version("chat-storage"))
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_serve(settings, reuse_port, sink))
    finally:
        tracing.shutdown()  # the spans of the shutdown itself, then the exporter thread


# Python's default (700, 10, 10) collects the young generation every few requests
# and the whole heap often enough that its pauses set the write path's p99.
GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    """Once started: move what start-up made (modules, app, pool) out of the collector's
    way (``gc.freeze``) and collect less often.

    This shortens the write path's tail latency and lowers server CPU per request
    (see loadtest/RESULTS.md#garbage-collection). Reference cycles are still collected,
    only in larger steps.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _serve(settings: Settings, reuse_port: bool = False,
                 sink: SinkFactory | None = None) -> int:
    from chat_storage.server.app import create_app  # the whole app is only needed to serve

    # the open-file limit raised first, then the connection cap below it (connlimits)
    limits = connlimits.Limits(settings.max_connections, settings.max_connections_per_ip,
                               settings.header_timeout_s, settings.idle_timeout_s)
    try:
        gate = connlimits.gate_for(limits, settings.fd_reserve)
    except ValueError as exc:
        admin.print_error(f"cannot start: {exc}")
        return 1
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    main_task = asyncio.current_task()
    assert main_task is not None  # noqa: S101 - narrows the type: set by the line above

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

    # protocol.AppRunner: a request refused before routing still gets the JSON error
    # body, and connections keep to the limits
    runner = protocol.AppRunner(
        create_app(settings, sink=sink), access_log=None,
        shutdown_timeout=settings.shutdown_timeout_s, limits=limits, gate=gate,
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
                await first_run_key(runner.app[POOL_KEY], settings)
        except (StorageError, asyncpg.PostgresError, OSError) as exc:
            admin.print_error(f"cannot start: {exc}".splitlines()[0])
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


async def first_run_key(pool: asyncpg.Pool, settings: Settings) -> None:
    """On a fresh embedded database, create tenant ``dev`` and print its key once."""
    async with pool.acquire() as conn:
        if await tenants.any_tenant(conn):
            return
        try:
            async with conn.transaction():  # a tenant without its key would help no one
                await tenants.create_tenant(conn, DEV_TENANT, settings.new_tenant_retention)
                created = await apikeys.create_key(conn, DEV_TENANT, name="first run")
        except Conflict:
            return  # another process sharing the data directory got there first
    # S104: the reverse: a wildcard becomes loopback here
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    base = f"http://{host}:{settings.port}"
    admin.print_line(
        f"Created tenant {DEV_TENANT!r} and an API key (shown only this once):\n"
        f"  {created.key}\n"
        f"Open {base}/ for the demo chat page (on this machine it signs in by itself\n"
        f"with a dev token; the key stays with you), and {base}/docs\n"
        "for the API documentation (Authorize with the key). Or try it with curl:\n"
        f"  curl -H 'X-Api-Key: {created.key}' -H 'Content-Type: application/json' "
        f"""-d '{{"user_id":"me"}}' {base}/api/v1/sessions"""
        f"\nTenant {DEV_TENANT!r} keeps messages {_kept(settings.new_tenant_retention)} "
        "(CHAT_DEFAULT_RETENTION_DAYS; change it with "
        f"`chat-storage tenants update {DEV_TENANT} --retention-days N` or --no-retention)."
    )


def _kept(days: int | None) -> str:
    return "forever" if days is None else f"{days} days, then archives and deletes them"
