"""JSON as the service writes it everywhere: API bodies, events, jsonb parameters.

UUIDs as strings (also asyncpg's own UUID type, which orjson does not know) and
datetimes as RFC 3339 with ``Z``. In ``storage/`` because it is the lowest layer:
``server/`` and ``actors/`` both encode with it.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID) or type(value).__name__ == "UUID":
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON."""
    return orjson.dumps(value, option=_OPTIONS, default=_default)
