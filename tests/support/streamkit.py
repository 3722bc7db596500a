"""Helpers for the streaming tests: sessions, WebSocket frames with deadlines, SSE parsing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from tests.conftest import Tenant

DEADLINE_S = 10.0  # an awaited frame that has not come by then is a failure, not a hang


async def new_session(client: TestClient, tenant: Tenant, user_id: str = "u1") -> str:  # type: ignore[type-arg]
    r = await client.post("/api/v1/sessions", json={"user_id": user_id}, headers=tenant.headers)
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])


async def connect(client: TestClient, tenant: Tenant, sid: str,  # type: ignore[type-arg]
                  **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
    headers = {**tenant.headers, **kwargs.pop("headers", {})}
    return await client.ws_connect(f"/api/v1/sessions/{sid}/ws", headers=headers, **kwargs)


async def recv(ws: aiohttp.ClientWebSocketResponse,
               deadline_s: float = DEADLINE_S) -> dict[str, Any]:
    msg = await ws.receive(timeout=deadline_s)
    assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    data: dict[str, Any] = msg.json()
    return data


async def recv_until(ws: aiohttp.ClientWebSocketResponse, pred: Callable[[dict[str, Any]], bool],
                     deadline_s: float = DEADLINE_S) -> list[dict[str, Any]]:
    """Frames up to and including the first that satisfies ``pred``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(deadline_s):
        while True:
            frame = await recv(ws)
            seen.append(frame)
            if pred(frame):
                return seen


async def start(ws: aiohttp.ClientWebSocketResponse, ref: str = "s1",
                **fields: Any) -> dict[str, Any]:
    await ws.send_json({"type": "stream.start", "ref": ref, **fields})
    frames = await recv_until(ws, lambda f: f.get("ref") == ref)
    assert frames[-1]["type"] == "stream.started", frames[-1]
    return frames[-1]


async def subscribe(ws: aiohttp.ClientWebSocketResponse, after_seq: int = 0, **extra: Any) -> None:
    await ws.send_json({"type": "subscribe", "after_seq": after_seq, **extra})


def rebuild(frames: list[dict[str, Any]], stream_id: str) -> str:
    """The text a client rebuilds from snapshots and deltas of one stream (checks offsets)."""
    text = ""
    for f in frames:
        if f.get("stream_id") != stream_id:
            continue
        if f["type"] == "stream.snapshot":
            text = f["content"]
            assert f["offset"] == len(text)
        elif f["type"] == "stream.delta":
            assert f["offset"] == len(text), (f["offset"], len(text))
            text += f["delta"]
    return text


def parse_sse(raw: str) -> list[dict[str, str]]:
    """Events of an SSE body: each a dict with id/event/data (comments dropped)."""
    out = []
    for block in raw.split("\n\n"):
        event: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            event[name] = value
        if "data" in event:
            out.append(event)
    return out


class RawWebSocket:
    """A bare WebSocket client on an asyncio stream, for a reader that stops reading.

    aiohttp's client buffers and resumes on its own; this one reads only when told,
    so the server sees a peer whose socket is full.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int, path: str, headers: dict[str, str],
                   rcvbuf: int = 4096) -> RawWebSocket:
        import base64
        import os
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # fixed small receive buffer (no autotuning to many MB): the server stalls soon
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send_json(self, value: Any) -> None:
        import json
        import os

        payload = json.dumps(value).encode()
        mask = os.urandom(4)
        assert len(payload) < 126
        header = bytes([0x81, 0x80 | len(payload)]) + mask
        self.writer.write(header + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        await self.writer.drain()

    async def read_all(self) -> tuple[list[dict[str, Any]], int | None]:
        """Every text frame up to the end, and the close code (``None``: no close frame)."""
        import json

        frames: list[dict[str, Any]] = []
        try:
            while True:
                b0, b1 = await self.reader.readexactly(2)
                size = b1 & 0x7F
                if size == 126:
                    size = int.from_bytes(await self.reader.readexactly(2), "big")
                elif size == 127:
                    size = int.from_bytes(await self.reader.readexactly(8), "big")
                payload = await self.reader.readexactly(size)
                if b0 & 0x0F == 0x8:
                    return frames, int.from_bytes(payload[:2], "big")
                frames.append(json.loads(payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            return frames, None

    def close(self) -> None:
        self.writer.transport.abort()
