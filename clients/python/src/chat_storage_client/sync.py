"""``Client``: the same API for code without asyncio.

It runs an :class:`AsyncClient` on an event loop of its own, in a private daemon thread
started by the client and stopped by :meth:`Client.close`; each call is handed to that
loop (``asyncio.run_coroutine_threadsafe``) and waited for. So it also works inside a
program that runs its own event loop elsewhere (a sync call must not be made *on* a
running loop's thread, though: it would block that loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from chat_storage_client.client import AsyncClient
from chat_storage_client.models import (
    ContextItem,
    Event,
    Feedback,
    JsonObject,
    Message,
    MessageUsage,
    Role,
    SearchHit,
    Session,
    ToolCall,
)
from chat_storage_client.pages import AsyncPager
from chat_storage_client.resources import ExportFormat
from chat_storage_client.streaming import AnswerStream
from chat_storage_client.transport import RetryPolicy

T = TypeVar("T")


class _Loop:
    """An event loop running in a daemon thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever,
                                        name="chat-storage-client", daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T]) -> T:
        if _on_this_loop(self.loop):
            raise RuntimeError("a sync Client call was made on its own loop's thread")
        future: Future[T] = asyncio.run_coroutine_threadsafe(_wrap(coro), self.loop)
        return future.result()

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """A blocking iterator over ``items`` (each step runs on the loop)."""
        try:
            while True:
                try:
                    yield self.run(anext(items))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(items, "aclose", None)
            # closed by the consumer, or collected: end the async side (its socket)
            if aclose is not None and self.loop.is_running() and not _on_this_loop(self.loop):
                self.run(aclose())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


async def _wrap(coro: Awaitable[T]) -> T:
    return await coro


def _on_this_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class SyncSessions:
    """``client.sessions`` of the sync client (see :class:`~.resources.Sessions`)."""

    def __init__(self, client: AsyncClient, loop: _Loop) -> None:
        self._a = client.sessions
        self._loop = loop

    def create(self, user_id: str, **fields: Any) -> Session:
        return self._loop.run(self._a.create(user_id, **fields))

    def get(self, session_id: str) -> Session:
        return self._loop.run(self._a.get(session_id))

    def list(self, **query: Any) -> Iterator[Session]:
        pager: AsyncPager[Session] = self._a.list(**query)
        return self._loop.iterate(aiter(pager))

    def update(self, session_id: str, **fields: Any) -> Session:
        return self._loop.run(self._a.update(session_id, **fields))

    def delete(self, session_id: str) -> None:
        self._loop.run(self._a.delete(session_id))

    def export(self, session_id: str, format: ExportFormat = "json") -> str:
        return self._loop.run(self._a.export(session_id, format))


class SyncMessages:
    """``client.messages`` of the sync client (see :class:`~.resources.Messages`)."""

    def __init__(self, client: AsyncClient, loop: _Loop) -> None:
        self._a = client.messages
        self._loop = loop

    def create(self, session_id: str, role: Role, content: str, **fields: Any) -> Message:
        return self._loop.run(self._a.create(session_id, role, content, **fields))

    def create_many(self, session_id: str, messages: Sequence[dict[str, Any]]) -> list[Message]:
        return self._loop.run(self._a.create_many(session_id, messages))

    def get(self, session_id: str, message_id: str) -> Message:
        return self._loop.run(self._a.get(session_id, message_id))

    def list(self, session_id: str, **query: Any) -> Iterator[Message]:
        return self._loop.iterate(aiter(self._a.list(session_id, **query)))

    def update(self, session_id: str, message_id: str, *, metadata: JsonObject | None = None,
               feedback: Feedback | None = None) -> Message:
        return self._loop.run(self._a.update(session_id, message_id, metadata=metadata,
                                             feedback=feedback))

    def delete(self, session_id: str, message_id: str) -> None:
        self._loop.run(self._a.delete(session_id, message_id))

    def search(self, q: str, **query: Any) -> Iterator[SearchHit]:
        return self._loop.iterate(aiter(self._a.search(q, **query)))


class SyncAnswerStream:
    """``with client.stream_answer(sid) as s: s.write(delta)`` (see :class:`AnswerStream`)."""

    def __init__(self, stream: AnswerStream, loop: _Loop) -> None:
        self._s = stream
        self._loop = loop

    @property
    def stream(self) -> AnswerStream:
        """The async stream underneath (ids, ``seq``, ``usage``, ``metadata``, ``message``)."""
        return self._s

    def write(self, delta: str) -> None:
        self._loop.run(self._s.write(delta))

    def end(self, *, usage: MessageUsage | None = None, metadata: JsonObject | None = None,
            tool_calls: Sequence[ToolCall] | None = None) -> Message:
        return self._loop.run(self._s.end(usage=usage, metadata=metadata,
                                          tool_calls=tool_calls))

    def abort(self, reason: str | None = None) -> Message:
        return self._loop.run(self._s.abort(reason))


class _SyncStreaming:
    def __init__(self, client: AsyncClient, loop: _Loop, session_id: str,
                 fields: dict[str, Any]) -> None:
        self._cm = client.stream_answer(session_id, **fields)
        self._loop = loop

    def __enter__(self) -> SyncAnswerStream:
        return SyncAnswerStream(self._loop.run(self._cm.__aenter__()), self._loop)

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        return bool(self._loop.run(self._cm.__aexit__(kind, exc, tb)))


class Client:
    """The sync twin of :class:`AsyncClient`: same arguments, same calls, no ``await``."""

    def __init__(self, base_url: str, *, api_key: str | None = None, token: str | None = None,
                 retry: RetryPolicy | None = None, timeout_s: float = 30.0,
                 check_version: bool = True) -> None:
        self._loop = _Loop()
        self._async = AsyncClient(base_url, api_key=api_key, token=token, retry=retry,
                                  timeout_s=timeout_s, check_version=check_version)
        self.sessions = SyncSessions(self._async, self._loop)
        self.messages = SyncMessages(self._async, self._loop)

    @property
    def server_version(self) -> str | None:
        return self._async.server_version

    @property
    def stores_tool_calls(self) -> bool:
        return self._async.stores_tool_calls

    def check_version(self) -> str:
        return self._loop.run(self._async.check_version())

    def call(self, call: Callable[[AsyncClient], Awaitable[T]]) -> T:
        """Run ``call(async_client)`` on this client's loop and wait for its result: several
        async calls as one blocking step (the sync twin of :meth:`call_async`)."""
        return self._loop.run(call(self._async))

    async def call_async(self, call: Callable[[AsyncClient], Awaitable[T]]) -> T:
        """Await ``call(async_client)`` from another event loop: it runs on this client's
        loop, and the caller's loop is not blocked meanwhile."""
        future = asyncio.run_coroutine_threadsafe(_wrap(call(self._async)), self._loop.loop)
        return await asyncio.wrap_future(future)

    def stream_answer(self, session_id: str, *, role: Role = "assistant",
                      parent_id: str | None = None,
                      context: Sequence[ContextItem] | None = None,
                      metadata: JsonObject | None = None,
                      sender_id: str | None = None,
                      tool_call_id: str | None = None) -> _SyncStreaming:
        fields = {"role": role, "parent_id": parent_id, "context": context,
                  "metadata": metadata, "sender_id": sender_id, "tool_call_id": tool_call_id}
        return _SyncStreaming(self._async, self._loop, session_id, fields)

    def watch(self, session_id: str, *, from_seq: int = 0) -> Iterator[Event]:
        return self._loop.iterate(self._async.watch(session_id, from_seq=from_seq))

    def close(self) -> None:
        """Close the client and stop its thread."""
        self._loop.run(self._async.close())
        self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
