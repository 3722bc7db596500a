"""The error body of docs/api.md, and the one exception type handlers raise for it."""

from __future__ import annotations

import datetime as dt
import http
from collections.abc import Mapping, Sequence
from typing import Any


class ApiError(Exception):
    """An error with an HTTP status, a message for the client and optional field errors."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: Sequence[Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = [dict(e) for e in errors]
        self.headers = dict(headers or {})


def not_found(what: str = "resource") -> ApiError:
    """404 for anything absent or owned by another tenant (the two look the same)."""
    return ApiError(404, f"{what} not found")


def error_body(
    *, path: str, status: int, message: str, request_id: str,
    errors: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """The body every error response carries."""
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    body: dict[str, Any] = {
        "timestamp": dt.datetime.now(dt.UTC),
        "path": path,
        "status": status,
        "error": reason,
        "message": message,
        "request_id": request_id,
    }
    if errors:
        body["errors"] = [dict(e) for e in errors]
    return body
