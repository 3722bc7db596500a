"""Checks of client input: sizes that are settings, and what Postgres could not hold.

:func:`check_decoded` is the one check of every decoded JSON input (a request body, a
WebSocket frame, a query's values) and :func:`check_fields` of every validated body
and query model (integers parsed from text). Together they keep from the database
what it would refuse with an error: a NUL character (``text`` and ``jsonb`` cannot
store it), an integer beyond 64 bits (``bigint``), JSON nested deeper than
:data:`MAX_JSON_DEPTH` (the encoder refuses past 254 levels). ``server.jsonio`` and
``server.frames`` call them where they parse; a handler never has to.
"""

from __future__ import annotations

from typing import Any

import orjson
import pydantic

from chat_storage.server.errors import ApiError

MAX_JSON_DEPTH = 64  # levels of objects and arrays in one body or frame, the outer one included
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_MESSAGES = {"body": "request body is invalid", "query": "query is invalid",
             "frame": "frame is invalid"}


def invalid(where: str, field: str, message: str) -> ApiError:
    """The 400 of one bad ``field`` of a ``where`` (``body``, ``query`` or ``frame``)."""
    return ApiError(400, _MESSAGES.get(where, "request is invalid"),
                    errors=[{"field": field, "message": message}])


def _field(path: tuple[str | int, ...], where: str) -> str:
    return ".".join(str(p) for p in path) or where


def check_decoded(value: Any, where: str) -> None:
    """400 if decoded JSON ``value`` nests deeper than :data:`MAX_JSON_DEPTH`, holds an
    integer outside the 64-bit range, or a string or key with a NUL character.

    Iterative (a hostile depth cannot exhaust the stack); the field named is the first
    one at fault.
    """
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(value, (), 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise invalid(where, _field(path, where),
                              f"must nest at most {MAX_JSON_DEPTH} levels deep")
            if isinstance(item, dict):
                for key, child in item.items():
                    if "\x00" in key:
                        raise invalid(where, _field(path, where),
                                      "must not contain NUL characters in keys")
                    stack.append((child, (*path, key), depth + 1))
            else:
                stack.extend((child, (*path, i), depth + 1) for i, child in enumerate(item))
        elif isinstance(item, str):
            if "\x00" in item:
                raise invalid(where, _field(path, where), "must not contain NUL characters")
        elif _out_of_range(item):
            raise invalid(where, _field(path, where), "must be a 64-bit integer")


def _out_of_range(item: Any) -> bool:
    return isinstance(item, int) and not isinstance(item, bool) and not (
        INT64_MIN <= item <= INT64_MAX)


def check_fields(model: pydantic.BaseModel, where: str) -> None:
    """400 if an integer field of ``model`` (or of a model it holds) is outside the
    64-bit range: pydantic turns a long query string into such an int (a JSON number
    is :func:`check_decoded`'s). Free-form objects (``metadata``) are not walked."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(model, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, pydantic.BaseModel):
            stack.extend((getattr(item, name), (*path, name))
                         for name in type(item).model_fields)
        elif isinstance(item, list | tuple):
            stack.extend((child, (*path, i)) for i, child in enumerate(item)
                         if isinstance(child, int | pydantic.BaseModel))
        elif _out_of_range(item):
            raise invalid(where, _field(path, where), "must be a 64-bit integer")


def check_json(field: str, value: Any, max_bytes: int) -> None:
    """400 if ``value`` is larger than ``max_bytes`` or holds a NUL character.

    Postgres ``jsonb`` cannot store ``\\u0000``; refusing it here keeps a bad value
    from failing a shared transaction later.
    """
    if value is None:
        return
    raw = orjson.dumps(value)
    if len(raw) > max_bytes:
        raise ApiError(400, "request body is invalid",
                       errors=[{"field": field, "message": f"must be at most {max_bytes} bytes"}])
    if b"\\u0000" in raw:
        raise ApiError(400, "request body is invalid",
                       errors=[{"field": field, "message": "must not contain NUL characters"}])


def check_text(field: str, value: str, max_bytes: int) -> None:
    """400 if ``value`` is longer than ``max_bytes`` in UTF-8."""
    if len(value) > max_bytes or len(value.encode()) > max_bytes:
        raise ApiError(400, "request body is invalid",
                       errors=[{"field": field, "message": f"must be at most {max_bytes} bytes"}])


def header_text(value: str | None, name: str) -> str | None:
    """``value`` of header ``name`` if it is UTF-8 text; else 400. aiohttp decodes header
    bytes that are not UTF-8 to lone surrogates, which no later ``encode()`` (a key's
    hash, a database parameter) accepts."""
    if value is None:
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        raise invalid("header", name, "must be UTF-8 text") from None
    return value
