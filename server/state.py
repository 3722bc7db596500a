"""The app's state: the settings and the services of this process under typed keys.

``server.app`` builds :class:`~chat_storage.runtime.services.Services` in its one
``cleanup_ctx`` and puts each service here; handlers read them with ``app[KEY]``.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from chat_storage.actors.live.hub import Hub
from chat_storage.actors.write.registry import Registry
from chat_storage.runtime.services import Services
from chat_storage.runtime.settings import Settings
from chat_storage.server.ratelimit import LIMITER_KEY
from chat_storage.storage.broker import Broker
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.ingest import IngestStream
from chat_storage.storage.objects import LocalStore, ObjectStore

SETTINGS_KEY = web.AppKey("settings", Settings)
SERVICES_KEY = web.AppKey("services", Services)
POOL_KEY = web.AppKey("pool", asyncpg.Pool)
OBJECTS_KEY = web.AppKey("objects", ObjectStore)
LOCAL_KEY = web.AppKey("local_objects", LocalStore)  # absent when files are in S3
BROKER_KEY: web.AppKey[Broker] = web.AppKey("broker")
REDIS_KEY = web.AppKey("redis", Redis)  # absent when REDIS_URL is not set
REGISTRY_KEY = web.AppKey("registry", Registry)
HUB_KEY = web.AppKey("hub", Hub)
INGEST_KEY = web.AppKey("ingest", IngestStream)  # absent in sync mode


def keyring_of(request: web.Request) -> Keyring | None:
    """The process's keyring (opens sealed content); ``None`` without a KEK."""
    return request.app[SERVICES_KEY].keyring


def expose(app: web.Application, services: Services) -> None:
    """Put every service of ``services`` under its key."""
    app[SERVICES_KEY] = services
    app[POOL_KEY] = services.pool
    app[OBJECTS_KEY] = services.objects
    if isinstance(services.objects, LocalStore):
        app[LOCAL_KEY] = services.objects
    app[BROKER_KEY] = services.broker
    if services.redis is not None:
        app[REDIS_KEY] = services.redis
    app[LIMITER_KEY] = services.limiter
    app[REGISTRY_KEY] = services.registry
    app[HUB_KEY] = services.hub
    if services.ingest is not None:
        app[INGEST_KEY] = services.ingest
