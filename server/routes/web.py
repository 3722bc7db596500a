"""The demo chat page at ``/``, its files under ``/web/``, the JS client under ``/web/client/``.

Plain files, no credential needed: the page's from the repository's ``web/`` directory
(``CHAT_WEB_DIR``), and the modules of the JavaScript client package
(``clients/js/src``, package data linked as ``chat_storage/client_js``). The page imports
the package from ``/web/client/index.js``, the one copy of the client; the older address
``/web/chat-storage.js`` re-exports it for pages written against that. The page gets a
user token (``/dev/tokens`` on a developer's machine, else a pasted key traded for one)
and keeps only the token (docs/auth.md). Not part of the API, so not in the OpenAPI
document. A strict Content-Security-Policy: the page loads nothing from another origin
and talks only to this server, and to the S3 endpoint its uploads go to when one is
configured.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web
from yarl import URL

from chat_storage.runtime.settings import DEFAULT_JS_CLIENT_DIR, Settings
from chat_storage.server.state import SETTINGS_KEY

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*\.(?:html|js|css)$")
_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'{s3}; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _csp(settings: Settings) -> str:
    """The page's policy; uploads go to the object store, so it may connect there too."""
    if settings.s3_bucket is None:
        return _CSP.format(s3="")
    endpoint = settings.s3_public_url or settings.s3_endpoint_url
    if endpoint is None:  # AWS: bucket.s3.region.amazonaws.com and the like
        return _CSP.format(s3=" https://*.amazonaws.com")
    url = URL(endpoint)
    return _CSP.format(s3=f" {url.scheme}://{url.raw_authority}")


def _file(settings: Settings, name: str, folder: Path | None = None) -> web.Response:
    path = (settings.web_dir if folder is None else folder) / name
    if not _NAME.match(name) or not path.is_file():
        raise web.HTTPNotFound()
    kind = name.rsplit(".", 1)[1]
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if kind == "html":
        headers["Content-Security-Policy"] = _csp(settings)
    return web.Response(body=path.read_bytes(), content_type=_TYPES[kind], charset="utf-8",
                        headers=headers)


async def index(request: web.Request) -> web.Response:
    """The demo chat page."""
    return _file(request.app[SETTINGS_KEY], "index.html")


async def asset(request: web.Request) -> web.Response:
    """A file of the page or the reference client."""
    return _file(request.app[SETTINGS_KEY], request.match_info["name"])


async def client_module(request: web.Request) -> web.Response:
    """A module of the JavaScript client package (``clients/js/src``)."""
    return _file(request.app[SETTINGS_KEY], request.match_info["name"], DEFAULT_JS_CLIENT_DIR)


def setup(app: web.Application) -> None:
    """Serve ``/``, ``/web/{name}`` and ``/web/client/{name}`` (outside the API and its
    OpenAPI document)."""
    app.router.add_get("/", index)
    app.router.add_get("/web/{name}", asset)
    app.router.add_get("/web/client/{name}", client_module)
