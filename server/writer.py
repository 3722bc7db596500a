"""The write path's place in the app: the registry of session mailboxes and its lifecycle.

Built after the live side's commit listener (``server.streaming.setup_fanout`` puts it
under :data:`LISTENER_KEY`; without one nobody is told of commits), with the sink
that commits the mailboxes' batches (the shared committer unless told otherwise).

Shutdown: ``on_shutdown`` (sites already closed) makes the registry refuse new
writes (503) and start flushing, bounded by 80% of ``CHAT_SHUTDOWN_TIMEOUT_S`` so
that every waiting handler has its answer before aiohttp's own deadline; the
cleanup step then waits for that flush, before the pool closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from chat_storage.actors.write.committer import Committer
from chat_storage.actors.write.config import WriteConfig
from chat_storage.actors.write.protocols import CommitListener
from chat_storage.actors.write.registry import Registry
from chat_storage.actors.write.shared import SharedCommitter, SinkFactory
from chat_storage.server.database import POOL_KEY
from chat_storage.server.settings import SETTINGS_KEY, Settings

REGISTRY_KEY = web.AppKey("registry", Registry)
LISTENER_KEY: web.AppKey[CommitListener] = web.AppKey("commit_listener")
FLUSH_SHARE = 0.8  # of the shutdown timeout; the rest is for the pool and the exit


def write_config(settings: Settings) -> WriteConfig:
    """The write path's knobs from the settings."""
    return WriteConfig(
        max_batch=settings.max_batch,
        mailbox_size=settings.mailbox_size,
        # all mailboxes together: bounded memory however many sessions are written to
        max_pending=max(settings.mailbox_size * 16, settings.max_batch * 4),
        acquire_timeout_s=settings.db_acquire_timeout_s,
        commit_timeout_s=settings.write_timeout_s,
        settle_timeout_s=settings.write_timeout_s,
    )


def setup(app: web.Application, sink: SinkFactory = SharedCommitter) -> None:
    """Start the registry after the pool; on shutdown flush it before the pool closes.

    ``sink`` makes what commits the mailboxes' batches from the committer.
    """
    closing: list[asyncio.Task[None]] = []  # the one flush, started by whichever comes first

    def start_closing(registry: Registry, settings: Settings) -> asyncio.Task[None]:
        if not closing:
            registry.begin_shutdown()
            closing.append(asyncio.create_task(
                registry.close(settings.shutdown_timeout_s * FLUSH_SHARE),
                name="registry-close",
            ))
        return closing[0]

    async def on_shutdown(app: web.Application) -> None:
        if REGISTRY_KEY in app:
            start_closing(app[REGISTRY_KEY], app[SETTINGS_KEY])

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS_KEY]
        config = write_config(settings)
        registry = Registry(
            sink(Committer(app[POOL_KEY], config), config), config,
            listener=app.get(LISTENER_KEY), idle_s=settings.actor_idle_s,
            write_timeout_s=settings.write_timeout_s,
        )
        registry.start()
        app[REGISTRY_KEY] = registry
        yield
        await start_closing(registry, settings)

    app.on_shutdown.append(on_shutdown)
    app.cleanup_ctx.append(ctx)
