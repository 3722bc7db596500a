"""HTTP to the API: credentials, an ``Idempotency-Key`` on every POST, bounded retries.

Retried: 429 and 503 (the server stored nothing), 409 ``idempotency_in_flight`` (the
first attempt of this very request is still running), and connection errors. A POST is
safe to retry because every attempt of one call carries the same ``Idempotency-Key``:
the server replays the first answer instead of storing twice. The wait is exponential
back-off with full jitter, or ``Retry-After`` when the server gives one (capped by
``max_wait_s``); at most ``attempts`` tries in all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp

from chat_storage_client import _json
from chat_storage_client.errors import ChatStorageError, ConnectionFailed, from_body

USER_AGENT = "chat-storage-client-python/0.1.0"
RETRY_STATUSES = frozenset({429, 503})


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry (``attempts`` counts the first try)."""

    attempts: int = 5
    base_s: float = 0.2
    max_wait_s: float = 10.0

    def backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform in [0, base·2^attempt], capped."""
        return random.uniform(0, min(self.max_wait_s, self.base_s * 2**attempt))  # noqa: S311 - jitter, not a secret


@dataclasses.dataclass(slots=True)
class Answer:
    """A successful answer: status, headers and the decoded JSON body (None if empty)."""

    status: int
    headers: Mapping[str, str]
    body: Any
    text: str


def credentials(api_key: str | None, token: str | None) -> dict[str, str]:
    """The headers of one credential: an API key or a user token, exactly one."""
    if (api_key is None) == (token is None):
        raise ValueError("give exactly one of api_key= or token=")
    if api_key is not None:
        return {"X-Api-Key": api_key}
    return {"Authorization": f"Bearer {token}"}


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (the delta-seconds form), or None."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Transport:
    """One ``aiohttp.ClientSession`` with the base URL, credentials and retry policy."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *,
                 retry: RetryPolicy, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"User-Agent": USER_AGENT, **headers}
        self.retry = retry
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        """The HTTP session, made on first use (inside the running loop)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout)
        return self._http

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._http is not None:
            await self._http.close()

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, Any] | None = None, raw: bool = False) -> Answer:
        """Send with retries; an error answer raises its :class:`ChatStorageError`."""
        headers = {}
        data: str | None = None
        if json is not None:
            data = _json.dumps(json)
            headers["Content-Type"] = "application/json"
        if method == "POST":
            headers["Idempotency-Key"] = str(uuid.uuid4())
        query = _query(params)
        url = self.base_url + path
        last: ChatStorageError | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                await asyncio.sleep(self._wait_s(attempt, last))
            try:
                async with self.http.request(method, url, data=data, params=query,
                                             headers=headers) as r:
                    text = await r.text()
                    if r.status < 400:
                        body = None if raw or not text else _json.loads(text)
                        return Answer(r.status, r.headers, body, text)
                    last = _error(r.status, r.headers, text)
                    if not _retryable(r.status, last):
                        raise last
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                    TimeoutError) as exc:
                last = ConnectionFailed(f"{method} {path}: {type(exc).__name__}: {exc}")
        raise last or ConnectionFailed("no attempt was made (RetryPolicy.attempts < 1)")

    def _wait_s(self, attempt: int, last: ChatStorageError | None) -> float:
        hinted = None if last is None else last.retry_after_s
        if hinted is not None:
            return min(hinted, self.retry.max_wait_s) + random.uniform(0, self.retry.base_s)  # noqa: S311
        return self.retry.backoff_s(attempt)


def _retryable(status: int, error: ChatStorageError) -> bool:
    return status in RETRY_STATUSES or error.code == "idempotency_in_flight"


def _error(status: int, headers: Mapping[str, str], text: str) -> ChatStorageError:
    try:
        body = _json.loads(text) if text else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return from_body(status, body, request_id=headers.get("X-Request-ID"),
                     retry_after_s=retry_after_s(headers))


def _query(params: Mapping[str, Any] | None) -> dict[str, str]:
    """Query parameters without the unset ones; booleans as ``true``/``false``."""
    out: dict[str, str] = {}
    for key, value in (params or {}).items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out
