"""JSON in and out: orjson when it is installed (the ``fast`` extra), else the stdlib."""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - depends on the installation
    orjson = None  # type: ignore[assignment]


def dumps(value: Any) -> str:
    """``value`` as compact JSON text."""
    if orjson is not None:
        return orjson.dumps(value).decode()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | bytes) -> Any:
    """The value of JSON ``text``."""
    if orjson is not None:
        return orjson.loads(text)
    return json.loads(text)
