"""Size checks for limits that are settings, and for JSON that Postgres would refuse."""

from __future__ import annotations

from typing import Any

import orjson

from chat_storage.server.errors import ApiError


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


