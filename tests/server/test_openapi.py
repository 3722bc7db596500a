"""The served OpenAPI document describes the docs/api.md contract, and /docs works offline."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate
from yarl import URL

from chat_storage.server.errors import CODES
from tests.support import documents

# Every call of docs/api.md's Sessions and Messages tables (and feedback, search), written
# as docs/api.md writes them; path parameter names are compared loosely ({id} = {session_id}).
API_MD_CALLS = [
    ("POST", "/api/v1/sessions"),
    ("GET", "/api/v1/sessions"),
    ("GET", "/api/v1/sessions/{id}"),
    ("PATCH", "/api/v1/sessions/{id}"),
    ("PUT", "/api/v1/sessions/{id}/favorite"),
    ("DELETE", "/api/v1/sessions/{id}/favorite"),
    ("DELETE", "/api/v1/sessions/{id}"),
    ("DELETE", "/api/v1/users/{user_id}/sessions"),
    ("GET", "/api/v1/sessions/{id}/export"),
    ("GET", "/api/v1/users/{user_id}/export"),
    ("POST", "/api/v1/sessions/{id}/messages"),
    ("POST", "/api/v1/sessions/{id}/messages/batch"),
    ("GET", "/api/v1/sessions/{id}/messages"),
    ("GET", "/api/v1/sessions/{id}/messages/{message_id}"),
    ("PATCH", "/api/v1/sessions/{id}/messages/{message_id}"),
    ("DELETE", "/api/v1/sessions/{id}/messages/{message_id}"),
    ("GET", "/api/v1/feedback"),
    ("GET", "/api/v1/search"),
]

# The query parameters docs/api.md lists for these calls.
API_MD_QUERIES = {
    ("GET", "/api/v1/sessions"): {"user_id", "favorite", "q", "limit", "cursor"},
    ("GET", "/api/v1/sessions/{id}/messages"): {
        "after_seq", "before_seq", "order", "leaf", "limit", "cursor"},
    ("GET", "/api/v1/feedback"): {"rating", "since", "user_id", "limit", "cursor"},
    ("GET", "/api/v1/search"): {"q", "user_id", "session_id", "limit", "cursor"},
    ("GET", "/api/v1/sessions/{id}/export"): {"format"},
}

_PARAM = re.compile(r"\{[^}]*\}")


def shape(path: str) -> str:
    return _PARAM.sub("{}", path)


async def get_document(client: Any) -> dict[str, Any]:
    return await documents.get_document(client, "/openapi.json")


def operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    by_shape = {shape(p): item for p, item in doc["paths"].items()}
    item = by_shape.get(shape(path))
    assert item is not None, f"{path} is not in the OpenAPI document"
    op = item.get(method.lower())
    assert op is not None, f"{method} {path} is not in the OpenAPI document (has {list(item)})"
    result: dict[str, Any] = op
    return result


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = doc["components"]["schemas"][name]
    return schema


async def test_document_is_valid_openapi_3_1(client: Any) -> None:
    doc = await get_document(client)
    assert doc["openapi"].startswith("3.1.")
    validate(doc)  # raises with the offending pointer when the document is invalid


@pytest.mark.parametrize(("method", "path"), API_MD_CALLS, ids=lambda v: str(v))
async def test_every_api_md_call_is_documented(client: Any, method: str, path: str) -> None:
    doc = await get_document(client)
    op = operation(doc, method, path)
    # a key always; a user token where the route is a user's (docs/api.md, "Credentials")
    if op.get("x-token-scope") is None:
        assert op["security"] == [{"ApiKey": []}]
    else:
        assert op["security"] == [{"ApiKey": []}, {"UserToken": []}]
        assert op["x-token-scope"] in ("read", "write", "stream")
    for status in ("401", "403", "429"):
        assert status in op["responses"], f"{method} {path} does not document {status}"
    documented = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
    assert API_MD_QUERIES.get((method, path), set()) <= documented
    path_params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
    served_path = next(p for p in doc["paths"] if shape(p) == shape(path))
    assert path_params == set(re.findall(r"\{(\w+)\}", served_path))


async def test_request_bodies_forbid_unknown_fields(client: Any) -> None:
    doc = await get_document(client)
    checked = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody")
            if body is None:
                continue
            todo = [body["content"]["application/json"]["schema"]]
            seen: set[int] = set()
            while todo:  # this schema and every object schema it contains
                schema = resolve(doc, todo.pop())
                if id(schema) in seen:
                    continue
                seen.add(id(schema))
                if "properties" in schema:
                    checked += 1
                    assert schema.get("additionalProperties") is False, (
                        f"{method.upper()} {path}: {schema.get('title')} accepts unknown fields")
                    todo.extend(schema["properties"].values())
                for key in ("items", "anyOf", "oneOf", "allOf", "prefixItems"):
                    value = schema.get(key)
                    if isinstance(value, dict):
                        todo.append(value)
                    elif isinstance(value, list):
                        todo.extend(value)
    assert checked > 0


async def test_errors_and_headers_are_documented(client: Any) -> None:
    doc = await get_document(client)
    op = operation(doc, "POST", "/api/v1/sessions")
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SessionCreate"}
    for status in ("400", "401", "403", "413", "415", "429"):
        response = op["responses"][status]
        assert response["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}
        assert "X-Request-ID" in response["headers"]
    assert "Retry-After" in op["responses"]["429"]["headers"]
    assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
    ok = op["responses"]["201"]
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
            "RateLimit-Policy"} <= set(ok["headers"])
    header_params = {p["name"] for p in op["parameters"] if p["in"] == "header"}
    assert "Idempotency-Key" in header_params
    error = doc["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"timestamp", "path", "status", "error", "code",
                                      "message", "request_id", "errors"}
    assert error["properties"]["code"]["enum"] == list(CODES)
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey", "in": "header", "name": "X-Api-Key"}
    bearer = doc["components"]["securitySchemes"]["UserToken"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    # tenant-wide operations take no user token
    assert operation(doc, "POST", "/api/v1/tokens")["security"] == [{"ApiKey": []}]
    assert operation(doc, "DELETE", "/api/v1/users/{user_id}/sessions")["security"] == [
        {"ApiKey": []}]
    assert operation(doc, "GET", "/api/v1/sessions/{session_id}/events")[
        "x-token-scope"] == "stream"
    # health and docs need no key
    assert operation(doc, "GET", "/healthz")["security"] == []
    assert operation(doc, "GET", "/openapi.json")["security"] == []


async def test_document_is_built_once(client: Any) -> None:
    first = await client.get("/openapi.json")
    second = await client.get("/openapi.json")
    assert await first.read() == await second.read()


async def test_docs_page_loads_only_local_assets(client: Any) -> None:
    r = await client.get("/docs")  # no API key
    assert r.status == 200
    assert r.content_type == "text/html"
    html = await r.text()
    assert "http://" not in html and "https://" not in html, "docs page names another host"
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    refs += re.findall(r"""url\s*:\s*["']([^"']+)["']""", html)  # Swagger UI's document URL
    assert any(ref.endswith(".js") for ref in refs)
    assert any(ref.endswith("openapi.json") for ref in refs)
    page = URL("/docs")
    for ref in refs:
        assert not ref.startswith("//"), ref
        target = page.join(URL(ref))
        asset = await client.get(str(target))
        assert asset.status == 200, f"{ref} -> {target}: {asset.status}"
        assert len(await asset.read()) > 0
