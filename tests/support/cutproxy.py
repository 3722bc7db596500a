"""A loopback TCP proxy in front of a real server whose connections a test cuts.

``cut_all()`` aborts every connection open now (both sides, at once, like a network
failure): what was in flight is lost. ``drop_reply_to(marker)`` lets the next request
whose bytes contain ``marker`` reach the server, then swallows the server's answer and
cuts that connection: the server did the work, the client never hears of it.
"""

from __future__ import annotations

import asyncio
import contextlib


class CutProxy:
    """Forwards 127.0.0.1:<port> to the server on 127.0.0.1:``upstream_port``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cuts = 0  # connections cut so far (by cut_all or a dropped reply)
        self.replies_dropped = 0
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = asyncio.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CutProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut_all(self) -> int:
        """Abort every open connection; how many there were."""
        pairs = list(self._pairs)
        for pair in pairs:
            self._cut(pair)
        return len(pairs)

    def drop_reply_to(self, marker: bytes) -> None:
        """Swallow the answer to the next request that contains ``marker`` (``b""``: the
        next data any client sends)."""
        self.dropped.clear()
        self._marker = marker

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _cut(self, pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        if pair in self._pairs:
            self._pairs.discard(pair)
            self.cuts += 1
        for writer in pair:
            writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        victim = asyncio.Event()

        async def to_server() -> None:
            while data := await reader.read(65536):
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    victim.set()
                up_writer.write(data)
                await up_writer.drain()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                if victim.is_set():  # the server answered: the client never hears it
                    self.replies_dropped += 1
                    self._cut(pair)
                    self.dropped.set()
                    return
                writer.write(data)
                await writer.drain()
            self._pairs.discard(pair)  # the server closed: not a cut
            writer.close()

        for pump in (to_server(), to_client()):
            task = asyncio.create_task(_quiet(pump))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _quiet(pump: object) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        await pump  # type: ignore[misc]
