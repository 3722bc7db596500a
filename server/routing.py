"""A route table that also describes each endpoint for the OpenAPI document.

Each routes module owns one :class:`RouteTable`; the app factory registers them all.
The OpenAPI document is generated from the same pydantic models the handlers use to
validate requests, so the two cannot drift apart.

Each endpoint also declares the API-key scope it needs (``scope=``; by default
``read`` for GET and HEAD, ``write`` for the other methods). The API middleware checks
it once, after authentication (:func:`chat_storage.server.auth.authenticate_request`),
through :data:`ROUTE_SCOPES_KEY`: no handler checks a scope itself. Likewise the scope a
user token needs (``token_scope=``, by default ``read`` for GET and ``write`` otherwise),
or ``tenant_wide=True`` for a route no user token reaches (:data:`ROUTE_ACCESS_KEY`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pydantic
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from chat_storage.storage.principal import Scope, TokenScope

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ENDPOINTS_KEY = web.AppKey("endpoints", list["Endpoint"])
# the scope each registered route needs (``None``: no key at all), for the auth check
ROUTE_SCOPES_KEY = web.AppKey("route_scopes", dict[AbstractRoute, Scope | None])
# what a user token needs for each route (``None``: none reaches it, the tenant's route)
ROUTE_ACCESS_KEY = web.AppKey("route_access", dict[AbstractRoute, TokenScope | None])
# the query parameters each route takes: the names (and aliases) of its query model
QUERY_NAMES_KEY = web.AppKey("query_names", dict[AbstractRoute, frozenset[str]])
_READ_METHODS = frozenset({"GET", "HEAD"})


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """One method + path, with what it takes and answers."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[pydantic.BaseModel] | None = None
    query: type[pydantic.BaseModel] | None = None
    # status -> response model, or None for no body, or a media type string
    responses: Mapping[int, type[pydantic.BaseModel] | str | None] = dataclasses.field(
        default_factory=dict
    )
    auth: bool = True
    idempotent: bool = False
    # the API-key scope needed; None: derived from the method (see required_scope)
    scope: Scope | None = None
    # the user-token scope needed; None: derived from the method (see user_access)
    token_scope: TokenScope | None = None
    # acts for the whole tenant (user erasure, minting tokens): no user token reaches it
    tenant_wide: bool = False
    # the router's path when it must differ from ``path`` (a regex that keeps a
    # parameter from matching a sibling resource's name)
    router_path: str | None = None
    # headers its 200 answer carries beyond every response's (names of the OpenAPI
    # document's components/headers)
    headers: tuple[str, ...] = ()

    @property
    def required_scope(self) -> Scope | None:
        """The scope a key needs here: declared, else ``read`` for GET/HEAD and ``write``
        for the rest; ``None`` for an endpoint that takes no key."""
        if not self.auth:
            return None
        if self.scope is not None:
            return self.scope
        return "read" if self.method in _READ_METHODS else "write"

    @property
    def user_access(self) -> TokenScope | None:
        """The scope a user token needs here: declared, else ``read`` for GET/HEAD and
        ``write`` for the rest; ``None`` where no user token may go."""
        if not self.auth or self.tenant_wide:
            return None
        if self.token_scope is not None:
            return self.token_scope
        return "read" if self.method in _READ_METHODS else "write"

    def query_names(self) -> frozenset[str]:
        """The query parameters this endpoint takes (none without a query model)."""
        if self.query is None:
            return frozenset()
        fields = self.query.model_fields.items()
        return frozenset(f.alias or name for name, f in fields)


class RouteTable:
    """Collects endpoints declared with the method decorators of this table."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.endpoints: list[Endpoint] = []

    def route(self, method: str, path: str, **spec: Any) -> Callable[[Handler], Handler]:
        """Declare ``handler`` for ``method path``; ``spec`` fills :class:`Endpoint`."""

        def decorate(handler: Handler) -> Handler:
            summary = spec.pop("summary", None) or (handler.__doc__ or "").strip().split("\n")[0]
            self.endpoints.append(
                Endpoint(method=method, path=path, handler=handler, summary=summary,
                         tag=spec.pop("tag", self.tag), **spec)
            )
            return handler

        return decorate

    def get(self, path: str, **spec: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **spec)

    def post(self, path: str, **spec: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **spec)

    def put(self, path: str, **spec: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **spec)

    def patch(self, path: str, **spec: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **spec)

    def delete(self, path: str, **spec: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **spec)

    def register(self, app: web.Application) -> None:
        """Add every endpoint to ``app``'s router, to its endpoint list, its scopes and
        its query parameter names."""
        scopes = app.setdefault(ROUTE_SCOPES_KEY, {})
        access = app.setdefault(ROUTE_ACCESS_KEY, {})
        names = app.setdefault(QUERY_NAMES_KEY, {})
        for ep in self.endpoints:
            route = app.router.add_route(ep.method, ep.router_path or ep.path, ep.handler)
            scopes[route] = ep.required_scope
            access[route] = ep.user_access
            names[route] = ep.query_names()
        app.setdefault(ENDPOINTS_KEY, []).extend(self.endpoints)


def query_names(request: web.Request) -> frozenset[str] | None:
    """The query parameters the matched route takes; ``None`` if it is not a route of
    a :class:`RouteTable` (an unknown path, a static file)."""
    return request.app.get(QUERY_NAMES_KEY, {}).get(request.match_info.route)
