"""API documentation: the OpenAPI and AsyncAPI documents and Swagger UI. No API key needed.

Swagger UI (5.x, which reads OpenAPI 3.1) is served from the files shipped in the
``swagger_ui`` package (swagger-ui-py) and a page of
ours (``server/static/docs.html``); nothing is loaded from another host, so the docs
work offline and behind strict egress rules.
"""

from __future__ import annotations

import functools
from pathlib import Path

import swagger_ui as swagger_ui_pkg
from aiohttp import web

from chat_storage.server import asyncapi, openapi
from chat_storage.server.jsonio import JSON_TYPE, dumps
from chat_storage.server.routing import ENDPOINTS_KEY, Endpoint, RouteTable

routes = RouteTable("docs")
STATIC_PREFIX = "/docs/static"
_PAGE = Path(__file__).resolve().parent.parent / "static" / "docs.html"


class DocumentCache:
    """The serialized OpenAPI document of one app, built on first request.

    Routes are fixed once the app has started, so the document never changes after.
    """

    def __init__(self) -> None:
        self.body: bytes | None = None


OPENAPI_CACHE_KEY = web.AppKey("openapi_cache", DocumentCache)


def swagger_ui_dir() -> Path:
    """The directory of Swagger UI's distribution files."""
    return Path(swagger_ui_pkg.__file__).resolve().parent / "static"


@functools.cache
def _page() -> bytes:
    return _PAGE.read_bytes()


@routes.get("/openapi.json", auth=False, responses={200: JSON_TYPE})
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API."""
    cache = request.app[OPENAPI_CACHE_KEY]
    if cache.body is None:
        endpoints: list[Endpoint] = request.app[ENDPOINTS_KEY]
        cache.body = dumps(openapi.build_document(endpoints))
    return web.Response(body=cache.body, content_type=JSON_TYPE, charset="utf-8")


@routes.get("/asyncapi.json", auth=False, responses={200: JSON_TYPE})
async def asyncapi_json(request: web.Request) -> web.Response:
    """The AsyncAPI 3 document of a session's WebSocket and Server-Sent Events."""
    return web.Response(body=_asyncapi_body(), content_type=JSON_TYPE, charset="utf-8")


@functools.cache
def _asyncapi_body() -> bytes:
    # built from the frame models alone, the same for every app: once per process
    return dumps(asyncapi.build_document())


@routes.get("/docs", auth=False, responses={200: "text/html"})
async def swagger_ui(request: web.Request) -> web.Response:
    """Interactive API documentation (Swagger UI)."""
    return web.Response(body=_page(), content_type="text/html", charset="utf-8")


def setup(app: web.Application) -> None:
    """Serve Swagger UI's files under ``/docs/static/`` and prepare the document cache."""
    app[OPENAPI_CACHE_KEY] = DocumentCache()
    app.router.add_static(STATIC_PREFIX, swagger_ui_dir(), follow_symlinks=False)
