"""``chat-storage serve --workers N``: N server processes sharing one port.

Each worker is a whole server (its own event loop, pool, actors, hub) listening on the
same host and port with ``SO_REUSEPORT``, so the kernel spreads new connections over
them (evenly on Linux; on macOS/BSD one worker may take most). Workers share nothing
in memory: they coordinate exactly like replicas, through Postgres (row locks order
writes) and Redis (fan-out, rate limits, async ingestion), which is why ``REDIS_URL``
is required.

The parent process (this module) does not serve. In order, it:

1. checks the settings and that the port can be bound with ``SO_REUSEPORT``;
2. starts the embedded Postgres once if there is no ``DATABASE_URL`` (the workers get
   its DSN), applies migrations and seeds ``CHAT_API_KEYS`` once (a worker's own
   migration check then finds nothing to do), and prints the first-run key;
3. starts N workers (``multiprocessing`` spawn), each in a process group of its own,
   so a terminal's Ctrl-C reaches only the parent, which forwards ONE SIGTERM;
4. supervises: a worker that dies unexpectedly is **restarted** after a back-off
   (0.5 s, doubling, at most 30 s); a worker slot that dies more than
   :data:`CRASH_LIMIT` times within :data:`CRASH_WINDOW_S` means something is wrong
   that restarting will not fix, so the parent stops all workers and exits 1;
5. on SIGTERM/SIGINT forwards SIGTERM to every worker (each drains gracefully within
   ``CHAT_SHUTDOWN_TIMEOUT_S``), waits for them (bounded: that timeout plus
   :data:`STOP_MARGIN_S`, then SIGKILL), and exits 0 if all of them exited 0, else 1.
   A second signal is forwarded too: workers then exit at once.

A worker whose parent dies (SIGKILL) stops gracefully by itself.

``CHAT_METRICS_PORT`` with workers: worker ``i`` (0..N-1) serves its ``/metrics`` on
that port + ``i`` (a port cannot be shared with ``SO_REUSEPORT`` without scrapes
landing on a random worker). Without it, ``/metrics`` on the main port answers for
whichever worker takes the connection. Worker log lines carry ``"worker": i``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any

from chat_storage.runtime import database
from chat_storage.runtime.settings import Settings, SettingsError
from chat_storage.server import logs, serving
from chat_storage.storage import embedded

log = logging.getLogger(__name__)

RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
CRASH_LIMIT = 5  # deaths of one worker slot within the window before giving up
CRASH_WINDOW_S = 60.0
STOP_MARGIN_S = 10.0  # past the workers' own shutdown timeout, before SIGKILL


def check(settings: Settings) -> None:
    """Raise :class:`SettingsError` if ``settings`` cannot run as several workers."""
    n = settings.workers
    if settings.redis_url is None:
        raise SettingsError(f"--workers {n} needs REDIS_URL: worker processes coordinate "
                            "through Redis")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise SettingsError("--workers greater than 1 needs SO_REUSEPORT (Linux, BSD, macOS)")
    if settings.metrics_port is not None:
        last = settings.metrics_port + n - 1
        if last > 65535:
            raise SettingsError(f"CHAT_METRICS_PORT={settings.metrics_port} with {n} workers "
                                "needs ports up to 65535 (one per worker)")
        if settings.metrics_port <= settings.port <= last:
            raise SettingsError(f"CHAT_METRICS_PORT={settings.metrics_port} with {n} workers "
                                f"uses ports up to {last}, which include CHAT_PORT")


def run(settings: Settings) -> int:
    """Run ``settings.workers`` workers until SIGTERM/SIGINT; return the exit status."""
    check(settings)
    logs.configure(settings.log_level)
    _probe_port(settings.host, settings.port)
    dsn = settings.database_url
    try:
        if dsn is None:
            dsn = embedded.start(settings.data_dir)
        asyncio.run(_prepare(dataclasses.replace(settings, database_url=dsn), settings))
        # each worker is one plain server (workers=1): it must never start workers itself
        child = dataclasses.replace(settings, database_url=dsn, api_keys=(), workers=1)
        return Supervisor(child, settings.workers).run()
    finally:
        if settings.embedded:
            embedded.stop_all()
            log.info("embedded postgres stopped")


def _probe_port(host: str, port: int) -> None:
    """Fail now (OSError) if the workers could not bind ``host:port`` with SO_REUSEPORT."""
    for family, kind, proto, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                message = f"cannot listen on {host}:{port}: {exc.strerror}"
                raise OSError(exc.errno, message) from None


async def _prepare(settings: Settings, given: Settings) -> None:
    """Migrate and seed once, and create the first-run key of an embedded database."""
    small = dataclasses.replace(settings, db_pool_min=1, db_pool_max=1)
    pool = await database.open_database(small)
    try:
        if given.embedded:
            await serving.first_run_key(pool, given)
    finally:
        await database.close_pool(pool, settings.shutdown_timeout_s)


@dataclasses.dataclass(eq=False)
class _Slot:
    index: int
    process: Any = None  # multiprocessing's SpawnProcess
    deaths: collections.deque[float] = dataclasses.field(default_factory=collections.deque)
    restart_at: float | None = None


class Supervisor:
    """Starts, restarts and stops the workers (see the module docstring)."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.slots = [_Slot(i) for i in range(workers)]
        self.signals = 0  # SIGTERM/SIGINT received; a handler only counts them
        self._context = multiprocessing.get_context("spawn")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)  # _wait drains it
        self._wake_w.setblocking(False)  # the signal wake-up fd must never block

    def run(self) -> int:
        """Supervise until a signal (0 if every worker then exited 0) or a crash loop (1)."""
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        try:
            for slot in self.slots:
                self._start(slot)
            log.info("workers started", extra={"workers": len(self.slots),
                                               "port": self.settings.port})
            healthy = self._supervise()
            clean = self._stop_all()
            return 0 if healthy and clean else 1
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._wake_r.close()
            self._wake_w.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1

    def _start(self, slot: _Slot) -> None:
        settings = self.settings
        if settings.metrics_port is not None:
            port = settings.metrics_port + slot.index
            settings = dataclasses.replace(settings, metrics_port=port)
        slot.process = self._context.Process(
            target=_worker_main, args=(settings, slot.index),
            name=f"chat-storage-worker-{slot.index}",
        )
        slot.process.start()
        slot.restart_at = None
        log.info("worker started", extra={"worker": slot.index, "pid": slot.process.pid})

    def _wait(self, timeout: float | None, processes: list[Any]) -> None:
        """Block until one of ``processes`` exits, a signal arrives or ``timeout`` passes.

        ``processes`` are those the caller last saw running. Their sentinels are waited
        on whatever their exit code is now: one that exited since the caller looked has
        a readable sentinel, so this returns at once. (Asking ``exitcode`` here instead
        reaped such a worker unseen and then waited for nothing: a stop sat out its
        whole deadline, and a SIGKILLed worker once went unnoticed for 30 s.)
        """
        waitables: list[Any] = [self._wake_r, *(p.sentinel for p in processes)]
        multiprocessing.connection.wait(waitables, timeout)
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    def _supervise(self) -> bool:
        """Keep the workers running until a signal (True) or a crash loop (False)."""
        while not self.signals:
            now = time.monotonic()
            waits = [s.restart_at - now for s in self.slots if s.restart_at is not None]
            running = [s.process for s in self.slots if s.restart_at is None]
            self._wait(max(0.0, min(waits)) if waits else None, running)
            if self.signals:
                break
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at is not None:
                    if slot.restart_at <= now:
                        self._start(slot)
                    continue
                code = slot.process.exitcode
                if code is None:
                    continue
                slot.deaths.append(now)
                while slot.deaths and slot.deaths[0] < now - CRASH_WINDOW_S:
                    slot.deaths.popleft()
                if len(slot.deaths) > CRASH_LIMIT:
                    log.error("worker keeps dying; stopping all workers", extra={
                        "worker": slot.index, "exit_code": code, "deaths": len(slot.deaths),
                        "window_s": CRASH_WINDOW_S})
                    return False
                delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** (len(slot.deaths) - 1))
                slot.restart_at = now + delay
                log.warning("worker exited unexpectedly; restarting", extra={
                    "worker": slot.index, "exit_code": code, "restart_in_s": delay})
        log.info("shutdown requested; stopping workers", extra={"workers": len(self.slots)})
        return True

    def _stop_all(self) -> bool:
        """SIGTERM every worker, wait (bounded), SIGKILL stragglers; whether all exited 0."""
        live = [s.process for s in self.slots
                if s.process is not None and s.process.exitcode is None]
        for process in live:
            _signal(process, signal.SIGTERM)
        forwarded = self.signals
        deadline = time.monotonic() + self.settings.shutdown_timeout_s + STOP_MARGIN_S
        while waiting := [p for p in live if p.exitcode is None]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wait(remaining, waiting)
            if self.signals > forwarded:  # another signal: the workers exit at once
                forwarded = self.signals
                for process in live:
                    if process.exitcode is None:
                        _signal(process, signal.SIGTERM)
        clean = True
        for process in live:
            if process.exitcode is None:
                log.error("worker did not stop in time; killing it", extra={"pid": process.pid})
                process.kill()
                process.join(5.0)
                clean = False
            elif process.exitcode not in (0, -signal.SIGTERM):
                # (-SIGTERM: a worker still starting, before it handled signals: no work lost)
                clean = False
        log.info("workers stopped", extra={"clean": clean})
        return clean


def _signal(process: Any, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
        os.kill(process.pid, sig)


# -- in the worker ------------------------------------------------------------------------


def _worker_main(settings: Settings, index: int) -> None:
    """A worker: a whole server on the shared port, until SIGTERM."""
    os.setpgid(0, 0)  # a terminal's Ctrl-C goes to the parent alone; it forwards SIGTERM
    _stop_with_parent()
    factory = logging.getLogRecordFactory()

    def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.worker = index
        return record

    logging.setLogRecordFactory(tagged)
    sys.exit(serving.serve_one(dataclasses.replace(settings, workers=1), reuse_port=True))


def _stop_with_parent() -> None:
    """SIGTERM this worker when the parent dies (even by SIGKILL): never an orphan."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
