"""One exception hierarchy for every failure the API reports, REST or WebSocket.

Each carries the API's error body (``body``: ``{status, error, code, message,
request_id, errors, …}``), its ``status`` (0 for a WebSocket frame or a failure before
any answer) and the ``request_id`` to quote when asking the operator.
"""

from __future__ import annotations

from typing import Any


class ChatStorageError(Exception):
    """Base of every error of this client."""

    def __init__(self, message: str, *, status: int = 0, body: dict[str, Any] | None = None,
                 request_id: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        # the server's Retry-After (429, 503), in seconds
        self.retry_after_s = retry_after_s
        self.message = message
        self.status = status
        self.body: dict[str, Any] = body or {}
        self.request_id = request_id or self.body.get("request_id")
        code = self.body.get("code")
        self.code: str | None = code if isinstance(code, str) else None

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The field errors of the body (``[{field, message}]``), empty when none."""
        errors = self.body.get("errors")
        return errors if isinstance(errors, list) else []

    def __str__(self) -> str:
        parts = [self.message]
        if self.status:
            parts.append(f"status {self.status}")
        if self.code:
            parts.append(f"code {self.code}")
        if self.request_id:
            parts.append(f"request_id {self.request_id}")
        return " | ".join(parts)


class Unauthorized(ChatStorageError):
    """401: no credential, or an expired, altered or foreign token."""


class Forbidden(ChatStorageError):
    """403: the credential is unknown, revoked or lacks the scope; a stream of another
    connection."""


class NotFound(ChatStorageError):
    """404: no such session or message (or another tenant's)."""


class Conflict(ChatStorageError):
    """409: a conflicting write, an ended stream, or an idempotent request in flight."""


class ValidationFailed(ChatStorageError):
    """400, 413, 415 or 422: the request is wrong; ``errors`` names the fields."""


class RateLimited(ChatStorageError):
    """429: over the rate limit after every retry; ``retry_after_s`` says how long to wait."""


class ServerError(ChatStorageError):
    """5xx (503 after every retry, or 500): nothing was stored for a 503."""


class ConnectionFailed(ChatStorageError):
    """The server could not be reached (after every retry)."""


class StreamError(ChatStorageError):
    """An answer could not be produced or resumed (its stream ended or was lost)."""


class VersionMismatch(ChatStorageError):
    """The server speaks a contract version this client does not support, or lacks an
    operation this client needs."""


_BY_CODE: dict[str, type[ChatStorageError]] = {
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "idempotency_in_flight": Conflict,
    "validation_failed": ValidationFailed,
    "unknown_parameter": ValidationFailed,
    "payload_too_large": ValidationFailed,
    "unsupported_media_type": ValidationFailed,
    "idempotency_mismatch": ValidationFailed,
    "rate_limited": RateLimited,
    "unavailable": ServerError,
    "internal": ServerError,
}
_BY_STATUS: dict[int, type[ChatStorageError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 405: NotFound, 409: Conflict,
    400: ValidationFailed, 413: ValidationFailed, 415: ValidationFailed,
    422: ValidationFailed, 429: RateLimited,
}


def from_body(status: int, body: dict[str, Any], *, request_id: str | None = None,
              retry_after_s: float | None = None) -> ChatStorageError:
    """The exception for an error answer (``status`` 0: a WebSocket ``error`` frame)."""
    code = body.get("code")
    kind = _BY_CODE.get(code) if isinstance(code, str) else None
    if kind is None:
        kind = _BY_STATUS.get(status, ServerError if status >= 500 or status == 0
                              else ChatStorageError)
    message = body.get("message")
    text = message if isinstance(message, str) and message else f"HTTP {status}"
    return kind(text, status=status, body=body, request_id=request_id,
                retry_after_s=retry_after_s)
