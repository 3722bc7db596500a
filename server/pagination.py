"""Opaque keyset cursors, bound to the list they came from.

A cursor carries the sort key of the last item served and a short hash of its scope
(endpoint, tenant, filters). Keyset paging never skips or repeats an item whose sort
key does not change, whatever is inserted meanwhile; a cursor from another list, tenant
or filter set, or a damaged one, is rejected with 400.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from chat_storage.server.errors import ApiError
from chat_storage.server.limits import INT64_MAX, INT64_MIN


def scope_of(*parts: object) -> str:
    """A short, stable fingerprint of what a list is (endpoint, tenant, filters)."""
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode(scope: str, key: Sequence[Any]) -> str:
    """The cursor that continues after ``key`` in the list ``scope``."""
    raw = orjson.dumps({"s": scope, "k": list(key)}, option=orjson.OPT_UTC_Z)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(cursor: str | None, scope: str, shape: Sequence[type]) -> list[Any] | None:
    """The key in ``cursor`` (``None`` if no cursor), checked against ``scope`` and ``shape``.

    ``shape`` lists the type of each key part: ``int``, ``str``, ``uuid.UUID`` or
    ``datetime.datetime``.
    """
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(data, dict) or data.get("s") != scope:
            raise ValueError("cursor belongs to another list")
        parts = data["k"]
        if not isinstance(parts, list) or len(parts) != len(shape):
            raise ValueError("wrong cursor shape")
        return [_convert(kind, value) for kind, value in zip(shape, parts, strict=True)]
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise ApiError(400, "cursor is invalid",
                       errors=[{"field": "cursor", "message": "is malformed or belongs to "
                                "another list; use next_cursor as returned"}]) from None


def _convert(kind: type, value: Any) -> Any:
    # a forged cursor must not carry what the database refuses (server.limits)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError("cursor integer out of range")
        return value
    if kind is str and isinstance(value, str):
        return value
    if kind is uuid.UUID and isinstance(value, str):
        return uuid.UUID(value)
    if kind is dt.datetime and isinstance(value, str):
        return dt.datetime.fromisoformat(value)
    raise ValueError("bad cursor value")


def page(
    items: list[dict[str, Any]], limit: int, scope: str, key_of: Any
) -> dict[str, Any]:
    """Build the page body from ``limit + 1`` fetched items.

    ``key_of(item)`` gives the sort key of an item (what the next cursor encodes).
    """
    has_more = len(items) > limit
    data = items[:limit]
    next_cursor = encode(scope, key_of(data[-1])) if has_more and data else None
    return {"data": data, "next_cursor": next_cursor, "has_more": has_more}
