"""The error body of docs/api.md, its codes, and the one exception type handlers raise.

``code`` is the stable, machine-readable half of an error, shared by the REST body and
the WebSocket ``error`` frame. An :class:`ApiError` gets it where it is made: from its
status by default, or a more specific one its caller passes. It is rendered in one
place, the middleware (``server/middlewares.py``), through :func:`error_body`.
"""

from __future__ import annotations

import datetime as dt
import http
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

ErrorCode = Literal[
    "unauthorized",
    "forbidden",
    "not_found",
    "validation_failed",
    "unknown_parameter",
    "payload_too_large",
    "unsupported_media_type",
    "rate_limited",
    "idempotency_mismatch",
    "idempotency_in_flight",
    "conflict",
    "unavailable",
    "internal",
]
CODES: tuple[ErrorCode, ...] = get_args(ErrorCode)

# the code of a status when the error's maker names none; 405 is "no route for this
# method", hence not_found
_STATUS_CODES: dict[int, ErrorCode] = {
    400: "validation_failed",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "not_found",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}


def code_for_status(status: int) -> ErrorCode:
    """The default code of ``status``: its own, else ``validation_failed`` for a 4xx
    (the request is at fault) and ``internal`` for anything else."""
    code = _STATUS_CODES.get(status)
    if code is not None:
        return code
    return "validation_failed" if 400 <= status < 500 else "internal"


class ApiError(Exception):
    """An error with an HTTP status, a code, a message for the client and field errors."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: ErrorCode | None = None,
        errors: Sequence[Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code: ErrorCode = code or code_for_status(status)
        self.message = message
        self.errors = [dict(e) for e in errors]
        self.headers = dict(headers or {})


def not_found(what: str = "resource") -> ApiError:
    """404 for anything absent or owned by another tenant (the two look the same)."""
    return ApiError(404, f"{what} not found")


def error_body(
    *, path: str, status: int, code: ErrorCode, message: str, request_id: str,
    errors: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """The body every error response carries; ``errors`` is ``[]`` when no single
    field is at fault."""
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return {
        "timestamp": dt.datetime.now(dt.UTC),
        "path": path,
        "status": status,
        "error": reason,
        "code": code,
        "message": message,
        "request_id": request_id,
        "errors": [dict(e) for e in errors],
    }
