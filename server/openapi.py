"""The OpenAPI 3.1 document, generated from the route tables.

Every :class:`~server.routing.Endpoint` names the pydantic models it validates and
answers with; their JSON schemas (draft 2020-12, which OpenAPI 3.1 uses as is) go to
``components.schemas`` and operations refer to them. The errors every endpoint can
answer (auth, rate limit, body checks, overload) and the headers every response
carries are added from the endpoint's flags (:mod:`.openapi_responses`, which builds
each operation's responses), so route modules declare only what is particular to them.

Each authenticated operation names the API-key scope it needs in ``x-required-scope``
(``read`` < ``write`` < ``admin``; a key reaches its own scope and those below it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pydantic
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from chat_storage.server.openapi_responses import HEADERS, JSON, PATH_PARAM, Refs, responses
from chat_storage.server.routing import Endpoint
from chat_storage.server.schemas import Error

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"
REF_TEMPLATE = "#/components/schemas/{model}"

# Path parameters that are not UUIDs; any other ``*_id`` is one.
_PATH_PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "user_id": {"type": "string", "minLength": 1, "maxLength": 128},
}

_IDEMPOTENCY_KEY_PARAM: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes a retried POST safe: same key and body replay the first answer "
                   "(24 h); a different body gets 422; a request still in flight gets 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}

def build_document(endpoints: Iterable[Endpoint], *, title: str = "chat-storage") -> dict[str, Any]:
    """The OpenAPI 3.1 document describing ``endpoints``."""
    endpoints = list(endpoints)
    schemas, refs = _component_schemas(endpoints)
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, None] = {}
    operation_ids: set[str] = set()
    for ep in endpoints:
        path = PATH_PARAM.sub(r"{\1}", ep.path)
        operation = _operation(ep, refs, schemas)
        operation["operationId"] = _unique_id(ep, operation_ids)
        paths.setdefault(path, {})[ep.method.lower()] = operation
        tags[ep.tag] = None
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": API_VERSION,
            "description": "Durable, live-streaming conversation storage for RAG chat "
                           "applications. Every `/api/v1` call needs an `X-Api-Key` "
                           "whose scope reaches the operation's `x-required-scope` "
                           "(`read` < `write` < `admin`), or a user token "
                           "(`Authorization: Bearer`) with the operation's `x-token-scope` "
                           "(an operation without one is the tenant's); otherwise 403. "
                           "Pages on allowed origins may call it (CORS; preflights need "
                           "no credential). See docs/api.md and docs/auth.md.",
        },
        "tags": [{"name": name} for name in tags],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "headers": HEADERS,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "UserToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "A user token (POST /api/v1/tokens) or a "
                                             "trusted issuer's OIDC token: one user's "
                                             "sessions, within `x-token-scope`."},
            },
        },
    }


def _component_schemas(endpoints: list[Endpoint]) -> tuple[dict[str, Any], Refs]:
    """Schemas of every body and response model, and the ``$ref`` of each (model, mode)."""
    wanted: dict[tuple[type[pydantic.BaseModel], JsonSchemaMode], None] = {
        (Error, "serialization"): None
    }
    for ep in endpoints:
        if ep.body is not None:
            wanted[(ep.body, "validation")] = None
        for model in ep.responses.values():
            if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
                wanted[(model, "serialization")] = None
    key_map, top = models_json_schema(list(wanted), ref_template=REF_TEMPLATE)
    refs = {(model, str(mode)): schema for (model, mode), schema in key_map.items()}
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    return schemas, refs


def _operation(ep: Endpoint, refs: Refs, schemas: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {"tags": [ep.tag], "summary": ep.summary}
    params = _path_parameters(ep.path)
    if ep.query is not None:
        params.extend(_query_parameters(ep.query, schemas))
    if ep.idempotent:
        params.append(dict(_IDEMPOTENCY_KEY_PARAM))
    if params:
        operation["parameters"] = params
    if ep.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": refs[(ep.body, "validation")]}},
        }
    operation["responses"] = responses(ep, refs)
    operation["security"] = ([{"ApiKey": []}] if ep.user_access is None
                             else [{"ApiKey": []}, {"UserToken": []}]) if ep.auth else []
    if ep.required_scope is not None:
        operation["x-required-scope"] = ep.required_scope
    if ep.user_access is not None:
        operation["x-token-scope"] = ep.user_access
    return operation


def _path_parameters(path: str) -> list[dict[str, Any]]:
    params = []
    for name in PATH_PARAM.findall(path):
        schema = _PATH_PARAM_SCHEMAS.get(name)
        if schema is None:
            schema = ({"type": "string", "format": "uuid"} if name.endswith("_id") or name == "aid"
                      else {"type": "string"})
        params.append({"name": name, "in": "path", "required": True, "schema": dict(schema)})
    return params


def _query_parameters(
    model: type[pydantic.BaseModel], schemas: dict[str, Any]
) -> list[dict[str, Any]]:
    """One query parameter per field of ``model``; nested definitions go to ``schemas``."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode="validation")
    schemas.update(schema.get("$defs", {}))
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = _without_null(dict(prop))
        description = prop.pop("description", None)
        prop.pop("title", None)
        if prop.get("default", 0) is None:
            del prop["default"]  # absent, not null
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                 "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop the ``null`` branch of an optional field: a query parameter is absent, not null."""
    any_of = schema.get("anyOf")
    if not isinstance(any_of, list):
        return schema
    rest = [s for s in any_of if s != {"type": "null"}]
    if len(rest) == len(any_of):
        return schema
    del schema["anyOf"]
    if len(rest) == 1:
        return {**rest[0], **schema}
    schema["anyOf"] = rest
    return schema


def _unique_id(ep: Endpoint, used: set[str]) -> str:
    """The handler's name, prefixed with the tag when another endpoint already has it."""
    base = getattr(ep.handler, "__name__", "") or f"{ep.method.lower()}_{ep.tag}"
    candidate = base if base not in used else f"{ep.tag}_{base}"
    n = 2
    while candidate in used:
        candidate = f"{ep.tag}_{base}_{n}"
        n += 1
    used.add(candidate)
    return candidate
