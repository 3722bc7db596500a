"""The write path's place in the app: the actor registry and its lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from actors.registry import Registry
from actors.session_actor import ActorConfig
from server.database import POOL_KEY
from server.settings import SETTINGS_KEY

REGISTRY_KEY = web.AppKey("registry", Registry)


def setup(app: web.Application) -> None:
    """Start the registry after the pool; on shutdown flush it before the pool closes."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS_KEY]
        registry = Registry(
            app[POOL_KEY],
            ActorConfig(
                max_batch=settings.max_batch,
                mailbox_size=settings.mailbox_size,
                acquire_timeout_s=settings.db_acquire_timeout_s,
            ),
            idle_s=settings.actor_idle_s,
            write_timeout_s=settings.write_timeout_s,
        )
        registry.start()
        app[REGISTRY_KEY] = registry
        yield
        await registry.close(settings.shutdown_timeout_s)

    app.cleanup_ctx.append(ctx)
