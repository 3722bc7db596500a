"""WebSockets of the server processes of tests/support/procs.py, read in the background."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.conftest import Tenant
from tests.support.procs import Server

Frame = dict[str, Any]


class Reader:
    """Every frame of one WebSocket, read in the background, and waits on what came."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self.closed = False
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(msg.json())
                async with self._changed:
                    self._changed.notify_all()
        self.closed = True
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, pred: Callable[[list[Frame]], bool], deadline_s: float = 30) -> None:
        """Until ``pred(frames)`` holds; fails if the connection ends or time runs out."""
        async with asyncio.timeout(deadline_s), self._changed:
            await self._changed.wait_for(lambda: pred(self.frames) or self.closed)
        assert pred(self.frames), f"the connection ended: {self.frames[-3:]}"

    async def sync(self, ref: str) -> None:
        """Round trip through the server: what it sent before the pong has been read."""
        await self.ws.send_json({"type": "ping", "ref": ref})
        await self.wait(lambda fs: any(f.get("ref") == ref for f in fs))

    async def close(self) -> None:
        await self.ws.close()
        await self._task


async def new_session(http: aiohttp.ClientSession, server: Server, tenant: Tenant) -> str:
    async with http.post(f"{server.base}/api/v1/sessions", json={"user_id": "replicas"},
                         headers=tenant.headers) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


async def open_ws(http: aiohttp.ClientSession, server: Server, tenant: Tenant,
                  sid: str) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(f"{server.base}/api/v1/sessions/{sid}/ws",
                                 headers=tenant.headers)


async def subscriber(http: aiohttp.ClientSession, server: Server, tenant: Tenant,
                     sid: str) -> Reader:
    """A subscribed reader, live (its feed listens to Redis) when this returns."""
    reader = Reader(await open_ws(http, server, tenant, sid))
    await reader.ws.send_json({"type": "subscribe", "after_seq": 0})
    await reader.sync("subscribed")
    return reader
