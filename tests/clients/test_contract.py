"""The SDK against the server's contract: models match /openapi.json, versions are checked."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from chat_storage_client import AsyncClient, VersionMismatch, models

from tests.conftest import Tenant
from tests.support.procs import Server

# SDK model -> the server's schema of the same object
MODELS = {
    models.Session: "Session",
    models.SessionUsage: "SessionUsage",
    models.Message: "Message",
    models.ContextItem: "ContextItem",
    models.MessageUsage: "MessageUsage",
    models.Feedback: "Feedback",
    models.LinkedAttachment: "LinkedAttachment",
    models.SearchHit: "SearchHit",
    models.ToolCall: "ToolCall",
}
PY_TO_JSON = {str: "string", int: "integer", float: "number", bool: "boolean",
              type(None): "null", dict: "object", list: "array"}


def _py_types(hint: Any) -> set[str]:
    """The JSON types a Python annotation allows."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_py_types(a) for a in typing.get_args(hint)))
    if origin in (typing.NotRequired, typing.Required):
        return _py_types(typing.get_args(hint)[0])
    if origin is typing.Literal:
        return {PY_TO_JSON[type(a)] for a in typing.get_args(hint)}
    if typing.is_typeddict(hint):
        return {"object"}
    return {PY_TO_JSON[origin or hint]}


def _schema_types(schema: dict[str, Any], document: dict[str, Any]) -> set[str]:
    """The JSON types a JSON schema allows (references followed)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _schema_types(document["components"]["schemas"][name], document)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return set().union(*(_schema_types(s, document) for s in schema[key]))
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return {PY_TO_JSON[type(v)] for v in values}
    kind = schema.get("type")
    if isinstance(kind, list):
        return set(kind)
    return {kind} if kind else {"object"}


async def _document(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/openapi.json") as r:
        assert r.status == 200
        document: dict[str, Any] = await r.json()
        return document


def _compare(model: Any, name: str, document: dict[str, Any]) -> None:
    """Fail unless ``model`` has the fields, types and required keys of schema ``name``."""
    schema = document["components"]["schemas"][name]
    hints = typing.get_type_hints(model, include_extras=True)
    ours = set(hints)
    assert ours == set(schema["properties"]), f"{name}: fields differ"
    for field in ours:
        assert _py_types(hints[field]) == _schema_types(schema["properties"][field],
                                                        document), f"{name}.{field}"
    required = set(schema.get("required", []))
    assert set(model.__required_keys__) <= required, f"{name}: required keys"


async def test_models_match_the_servers_openapi_document(server: Server) -> None:
    document = await _document(server.base)
    for model, name in MODELS.items():
        _compare(model, name, document)
    # and the comparison sees drift: a renamed field, a changed type
    drifted = {**typing.get_type_hints(models.Session), "last_seq": str}
    with pytest.raises(AssertionError, match=r"Session\.last_seq"):
        _compare(typing.TypedDict("Session", drifted), "Session", document)  # type: ignore[operator]
    renamed = {**typing.get_type_hints(models.SearchHit), "text": str}
    del renamed["snippet"]
    with pytest.raises(AssertionError, match="fields differ"):
        _compare(typing.TypedDict("SearchHit", renamed), "SearchHit", document)  # type: ignore[operator]


Rewrite = Callable[[dict[str, Any]], None]


async def _rewriting(server: Server, rewrite: Rewrite) -> AsyncIterator[str]:
    """A stand-in for another server version: the real server's /openapi.json, changed
    by ``rewrite`` (no other version of the server can run here); other paths 404."""
    async def openapi(_: web.Request) -> web.Response:
        document = await _document(server.base)
        rewrite(document)
        return web.json_response(document)

    app = web.Application()
    app.router.add_get("/openapi.json", openapi)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        yield str(test_server.make_url("")).rstrip("/")
    finally:
        await test_server.close()


def _version_2(document: dict[str, Any]) -> None:
    document["info"]["version"] = "2.0"


def _without_search(document: dict[str, Any]) -> None:
    del document["paths"]["/api/v1/search"]


@pytest.mark.parametrize(("rewrite", "says"), [
    (_version_2, "the server speaks API version 2.0; this client"),
    (_without_search, "lacks operations this client needs: GET /api/v1/search"),
])
async def test_a_server_of_another_version_is_a_clear_error(
        server: Server, tenant: Tenant, rewrite: Rewrite, says: str) -> None:
    async for base in _rewriting(server, rewrite):
        async with AsyncClient(base, api_key=tenant.key) as client:
            with pytest.raises(VersionMismatch, match=re.escape(says)):
                await client.sessions.create("u1")
            with pytest.raises(VersionMismatch):
                async with client.stream_answer("00000000-0000-7000-8000-000000000000"):
                    pass


async def test_something_that_is_not_a_server_is_a_clear_error(tenant: Tenant) -> None:
    app = web.Application()
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        base = str(test_server.make_url("")).rstrip("/")
        async with AsyncClient(base, api_key=tenant.key) as client:
            with pytest.raises(VersionMismatch, match="is this a chat-storage server"):
                await client.sessions.get("x")
    finally:
        await test_server.close()
