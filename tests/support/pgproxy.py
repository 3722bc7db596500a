"""A TCP proxy in front of the real Postgres whose connections a test can cut.

It makes the indeterminate commit reproducible: ``cut_next("reply")`` lets the next
request through and swallows its answer (the server commits, the client never hears
it), ``cut_next("request")`` swallows the request (nothing reaches the server); either
way the victim connection is then closed. ``refuse`` makes new connections fail, as
if the database were unreachable. ``freeze()`` holds every byte both ways and every new
connection until ``thaw()``: the database as a SIGSTOPped Postgres looks to its clients
(connections open, nothing answered), without stopping the Postgres others share.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

Cut = Literal["reply", "request"]


class PgProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; one connection at a time can be cut."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.refuse = False
        self._cut: Cut | None = None
        self.cut_done = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def freeze(self) -> None:
        """Stop forwarding anything (connections stay open) until :meth:`thaw`."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def cut_next(self, how: Cut) -> None:
        """Cut the connection that next sends a request, losing its reply or the request."""
        self.cut_done.clear()
        self._cut = how

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        victim = asyncio.Event()  # set when this connection was picked to be cut
        lost_reply = asyncio.Event()

        async def client_to_server() -> None:
            while data := await reader.read(65536):
                if self._cut is not None and not victim.is_set() and _is_query(data):
                    how, self._cut = self._cut, None
                    victim.set()
                    if how == "request":
                        _close(writer, up_writer)  # the server never sees it
                        self.cut_done.set()
                        return
                    lost_reply.set()
                await self._flowing.wait()
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def server_to_client() -> None:
            while data := await up_reader.read(65536):
                if lost_reply.is_set():
                    # the request ran (and committed); its answer never arrives
                    await asyncio.sleep(0.2)
                    _close(writer, up_writer)
                    self.cut_done.set()
                    return
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
            writer.close()

        for pump in (client_to_server(), server_to_client()):
            task = asyncio.create_task(_quiet(pump))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def _is_query(data: bytes) -> bool:
    # a simple query ('Q') or the start of an extended-protocol exchange ('P'arse/'B'ind)
    return data[:1] in (b"Q", b"P", b"B")


def _close(*writers: asyncio.StreamWriter) -> None:
    for w in writers:
        w.close()


async def _quiet(pump: object) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError, ConnectionError):
        await pump  # type: ignore[misc]
