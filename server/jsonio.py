"""JSON in and out: orjson responses, body and query parsing with pydantic models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
import pydantic
from aiohttp import web

from chat_storage.server.auth import bind_user
from chat_storage.server.errors import ApiError
from chat_storage.server.field_errors import field_errors
from chat_storage.server.limits import check_decoded, check_fields
from chat_storage.storage.jsoncodec import dumps

M = TypeVar("M", bound=pydantic.BaseModel)
JSON_TYPE = "application/json"
__all__ = ["JSON_TYPE", "dumps", "encoded_json_response", "json_response", "parse_body",
           "parse_query", "read_json", "validate"]


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response with ``application/json; charset=utf-8``."""
    return encoded_json_response(dumps(data), status, headers)


def encoded_json_response(
    body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A response of JSON encoded already (a replayed answer), as :func:`json_response`."""
    return web.Response(
        body=body, status=status, headers=headers, content_type=JSON_TYPE, charset="utf-8",
    )


async def read_json(request: web.Request) -> Any:
    """The request's JSON body: 415 for another content type, 413 past the limit, 400 if
    bad or beyond what the database holds (:func:`~chat_storage.server.limits.check_decoded`)."""
    if request.content_type != JSON_TYPE:
        raise ApiError(415, "Content-Type must be application/json")
    declared = request.content_length
    if declared is not None and declared > request.client_max_size:
        # refused before reading: a client announcing too much does not wait for a 413
        raise ApiError(413, "request body is too large")
    raw = await request.read()  # aiohttp raises 413 past client_max_size
    if not raw:
        raise ApiError(400, "request body is empty")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "request body is not valid JSON") from None
    check_decoded(data, "body")
    return data


def validate(model: type[M], data: Any, *, location: str = "body") -> M:
    """Validate ``data`` against ``model``; 400 with one entry per bad field otherwise
    (an integer field beyond 64 bits too: :func:`~chat_storage.server.limits.check_fields`)."""
    try:
        valid = model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = field_errors(exc, location)
        message = "request body is invalid" if location == "body" else "query is invalid"
        raise ApiError(400, message, errors=errors) from None
    check_fields(valid, location)
    return valid


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Read and validate the JSON body as ``model``; a ``user_id`` in it is bound to a
    user token's user (:func:`chat_storage.server.auth.bind_user`)."""
    return bind_user(request, validate(model, await read_json(request)))


def parse_query(request: web.Request, model: type[M]) -> M:
    """Validate the query string as ``model`` (each parameter given once); a ``user_id``
    is bound to a user token's user, as in :func:`parse_body`."""
    data: dict[str, str] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise ApiError(400, "query is invalid",
                           errors=[{"field": key, "message": "given more than once"}])
        data[key] = values[0]
    check_decoded(data, "query")  # a NUL, which no text column holds
    return bind_user(request, validate(model, data, location="query"))
