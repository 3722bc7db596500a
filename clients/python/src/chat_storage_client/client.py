"""``AsyncClient``: the API from asyncio code."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from chat_storage_client import version
from chat_storage_client.errors import ChatStorageError
from chat_storage_client.models import ContextItem, Event, JsonObject, Role
from chat_storage_client.resources import Messages, Sessions
from chat_storage_client.streaming import AnswerStream, stream_answer
from chat_storage_client.transport import Answer, RetryPolicy, Transport, credentials
from chat_storage_client.watch import watch


class _Checked(Transport):
    """A transport that checks the server's contract version before its first request."""

    def __init__(self, *args: Any, check_version: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server_version: str | None = None
        self.message_fields: frozenset[str] = frozenset()  # of the server's Message schema
        self._check = check_version
        self._lock = asyncio.Lock()

    async def ensure_version(self) -> None:
        """Fetch ``/openapi.json`` once and check it (VersionMismatch if unsupported)."""
        if not self._check or self.server_version is not None:
            return
        async with self._lock:
            if self.server_version is not None:
                return
            try:
                answer = await super().request("GET", "/openapi.json")
            except ChatStorageError as exc:
                if exc.status in (404, 405):
                    raise version.not_a_server(exc.status) from exc
                raise
            self.server_version = version.check(answer.body)
            self.message_fields = version.message_fields(answer.body)

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, Any] | None = None, raw: bool = False) -> Answer:
        await self.ensure_version()
        return await super().request(method, path, json=json, params=params, raw=raw)


class AsyncClient:
    """The chat-storage API: ``sessions``, ``messages``, ``stream_answer`` and ``watch``.

    Give ``api_key=`` (a tenant key) or ``token=`` (a user token). Use it as
    ``async with AsyncClient(...) as client:`` or call :meth:`close`. The first call
    checks that the server speaks a contract version this client supports
    (``check_version=False`` skips it).
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, token: str | None = None,
                 retry: RetryPolicy | None = None, timeout_s: float = 30.0,
                 check_version: bool = True) -> None:
        self._transport = _Checked(base_url, credentials(api_key, token),
                                   retry=retry or RetryPolicy(), timeout_s=timeout_s,
                                   check_version=check_version)
        self.sessions = Sessions(self._transport)
        self.messages = Messages(self._transport)
        self.timeout_s = timeout_s

    @property
    def server_version(self) -> str | None:
        """The server's contract version (``info.version``), once checked."""
        return self._transport.server_version

    @property
    def stores_tool_calls(self) -> bool:
        """Whether the server stores ``tool_calls``/``tool_call_id`` (known once checked)."""
        return "tool_calls" in self._transport.message_fields

    async def check_version(self) -> str:
        """Check the server now (VersionMismatch if unsupported); its contract version."""
        await self._transport.ensure_version()
        return self._transport.server_version or ""

    def stream_answer(self, session_id: str, *, role: Role = "assistant",
                      parent_id: str | None = None,
                      context: Sequence[ContextItem] | None = None,
                      metadata: JsonObject | None = None,
                      sender_id: str | None = None, tool_call_id: str | None = None,
                      ) -> contextlib.AbstractAsyncContextManager[AnswerStream]:
        """``async with client.stream_answer(sid) as s: await s.write(delta)``.

        The answer's place (``seq``) is fixed on entry; it is stored complete on exit
        (with ``s.usage`` / ``s.metadata``), or by ``await s.end(tool_calls=[...])`` in
        the block, or aborted if the block raises. A dropped connection is resumed
        without losing or repeating a character. A streamed ``role="tool"`` message
        names the call it answers with ``tool_call_id``.
        """
        return self._streaming(session_id, role=role, parent_id=parent_id, context=context,
                               metadata=metadata, sender_id=sender_id,
                               tool_call_id=tool_call_id)

    @contextlib.asynccontextmanager
    async def _streaming(self, session_id: str, **fields: Any) -> AsyncIterator[AnswerStream]:
        await self._transport.ensure_version()
        async with stream_answer(self._transport, self.messages, session_id,
                                 reply_timeout_s=self.timeout_s, **fields) as stream:
            yield stream

    async def watch(self, session_id: str, *, from_seq: int = 0) -> AsyncIterator[Event]:
        """Every event of the session after ``from_seq``, live, resuming after drops."""
        await self._transport.ensure_version()
        async for event in watch(self._transport, session_id, from_seq=from_seq):
            yield event

    async def close(self) -> None:
        """Close the HTTP session (and with it any socket still open)."""
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
