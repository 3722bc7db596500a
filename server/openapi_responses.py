"""The responses of an OpenAPI operation: statuses, their bodies and their headers.

Every endpoint answers what its route declares plus the errors the middlewares and
its inputs can cause (auth, rate limit, body checks, overload: derived from the
endpoint's flags); each response names the headers it carries, defined once under
``components.headers``. Used by :mod:`.openapi`.
"""

from __future__ import annotations

import http
import re
from collections.abc import Mapping
from typing import Any

import pydantic

from chat_storage.server.routing import Endpoint
from chat_storage.server.schemas import Error

JSON = "application/json"
# (model, "validation" | "serialization") -> {"$ref": ...}
Refs = Mapping[tuple[Any, str], dict[str, Any]]
PATH_PARAM = re.compile(r"\{(\w+)(?::[^{}]*)?\}")

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The client's request id if it sent a valid one, else a new one; "
                       "it is in every log line and error body of the request.",
        "schema": {"type": "string"},
    },
    "RateLimit-Limit": {"description": "Token bucket capacity (the burst) of the API key.",
                        "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "Tokens left in the bucket.",
                            "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "Seconds until the bucket is full again.",
                        "schema": {"type": "integer"}},
    "RateLimit-Policy": {
        "description": "The key's limits: `<requests per second>;w=1;burst=<capacity>`; "
                       "they may differ per tenant and per key.",
        "schema": {"type": "string"}, "example": "100;w=1;burst=200"},
    "Retry-After": {"description": "Seconds to wait before retrying; nothing was stored.",
                    "schema": {"type": "integer"}},
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request "
                       "with the same Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "x-vercel-ai-ui-message-stream": {
        "description": "`v1`: the body is a UI message stream of the Vercel AI SDK (its "
                       "parts as `data:` lines, ending with `data: [DONE]`).",
        "schema": {"type": "string", "enum": ["v1"]}},
    "WWW-Authenticate": {
        "description": "`ApiKey, Bearer`: send a key in X-Api-Key or a user token in "
                       "Authorization; `Bearer error=\"invalid_token\"` for a token that "
                       "does not verify.",
        "schema": {"type": "string"}},
}

_ERROR_MESSAGES = {
    400: "The body, query or a field is invalid, or the query has a parameter the "
         "route does not take (see `code` and `errors`).",
    401: "No API key.",
    403: "The API key is unknown or revoked.",
    404: "No such resource (or it belongs to another tenant).",
    409: "Conflict (e.g. the same Idempotency-Key is still in flight).",
    413: "The request body is over the configured limit.",
    415: "Content-Type is not application/json.",
    422: "The Idempotency-Key was used with a different body.",
    429: "Rate limit exceeded; see Retry-After.",
    503: "Overloaded or the database is unavailable; nothing was stored. See Retry-After.",
}


def _standard_errors(ep: Endpoint) -> set[int]:
    """Error statuses an endpoint can answer because of the middlewares and its inputs."""
    statuses: set[int] = set()
    if ep.auth:  # an /api/v1 route: also refuses unknown query parameters
        statuses |= {400, 401, 403, 429, 503}
    if ep.body is not None:
        statuses |= {400, 413, 415}
    if ep.query is not None:
        statuses.add(400)
    if PATH_PARAM.search(ep.path):
        statuses.add(404)
    if ep.idempotent:
        statuses |= {409, 422}
    return statuses


def responses(ep: Endpoint, refs: Refs) -> dict[str, Any]:
    declared: dict[int, type[pydantic.BaseModel] | str | None] = dict(ep.responses)
    for status in _standard_errors(ep):
        declared.setdefault(status, Error)
    out: dict[str, Any] = {}
    for status in sorted(declared):
        out[str(status)] = _response(ep, status, declared[status], refs)
    return out


def _response(
    ep: Endpoint, status: int, model: type[pydantic.BaseModel] | str | None, refs: Refs
) -> dict[str, Any]:
    description = _ERROR_MESSAGES.get(status) if model is Error else None
    if description is None:
        try:
            description = http.HTTPStatus(status).phrase
        except ValueError:
            description = f"Status {status}"
    response: dict[str, Any] = {
        "description": description, "headers": _response_headers(ep, status, model is Error),
    }
    if isinstance(model, str):  # media types, comma-separated (an export's formats)
        response["content"] = {
            media: {"schema": _media_schema(media.split(";")[0].strip())}
            for media in (m.strip() for m in model.split(","))}
    elif model is not None:
        response["content"] = {JSON: {"schema": refs[(model, "serialization")]}}
    return response


# one Server-Sent Event as a client's parser sees it (what a validator checks each
# event against); `data` is one JSON frame of docs/streaming.md
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": JSON},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}


def _media_schema(media: str) -> dict[str, Any]:
    """A JSON document may be any JSON value, an event stream is events; anything else
    (JSON Lines, Markdown) is text."""
    if media == JSON or media.endswith("+json"):
        return {}
    if media == "text/event-stream":
        return dict(SSE_EVENT_SCHEMA)
    return {"type": "string"}


def _response_headers(ep: Endpoint, status: int, is_error: bool) -> dict[str, Any]:
    names = ["X-Request-ID"]
    if ep.auth and status not in (401, 403):
        names += ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
                  "RateLimit-Policy"]
    if is_error and status in (429, 503):
        names.append("Retry-After")
    if status == 401:
        names.append("WWW-Authenticate")
    if ep.idempotent and 200 <= status < 300:
        names.append("Idempotent-Replayed")
    if status == 200:
        names += ep.headers
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}
