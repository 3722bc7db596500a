"""Follow a session live: every message and delta once, in order, across reconnects.

The position is the highest ``seq`` seen plus, for each answer in progress, how many
characters of it were seen. A dropped connection is replaced and re-subscribed with
``after_seq`` and ``streams`` (docs/streaming.md, "Exact resume"): the server sends what
is missing as one delta from there, then the answer's final event if it ended meanwhile.
Deltas the watcher already has are dropped (an overlapping one is trimmed), so a
consumer that appends every ``stream.delta`` gets the exact text.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from chat_storage_client import _json
from chat_storage_client.errors import ChatStorageError, ConnectionFailed, from_body
from chat_storage_client.models import Event
from chat_storage_client.socket import FATAL_CLOSE_CODES, refused
from chat_storage_client.transport import Transport

FINAL = frozenset({"stream.completed", "stream.aborted", "stream.interrupted"})
MAX_STREAMS = 64  # the server takes at most this many stream positions


@dataclasses.dataclass
class Position:
    """Where a watcher is: every message up to ``after_seq``, and the streams in progress."""

    after_seq: int = 0
    offsets: dict[int, int] = dataclasses.field(default_factory=dict)  # seq -> characters
    seqs: dict[str, int] = dataclasses.field(default_factory=dict)  # stream_id -> seq

    def subscribe_frame(self) -> dict[str, Any]:
        """The ``subscribe`` that resumes from here."""
        streams = [{"seq": s, "offset": o} for s, o in sorted(self.offsets.items())]
        return {"type": "subscribe", "after_seq": self.after_seq,
                "streams": streams[-MAX_STREAMS:]}

    def take(self, event: Event) -> Event | None:
        """Advance past ``event``; the event to hand on (trimmed), or None if already had."""
        kind = event.get("type")
        if kind == "stream.delta":
            seq = self.seqs.get(event["stream_id"])
            if seq is None:
                return event
            have = self.offsets.get(seq, 0)
            offset, delta = int(event["offset"]), str(event["delta"])
            if offset + len(delta) <= have:
                return None
            if offset < have:
                event = {**event, "offset": have, "delta": delta[have - offset:]}
            self.offsets[seq] = offset + len(delta)
            return event
        if kind in ("stream.started", "stream.snapshot"):
            seq = int(event["seq"])
            self.seqs[event["stream_id"]] = seq
            self.offsets[seq] = int(event.get("offset", 0))
            self.after_seq = max(self.after_seq, seq)
            return event
        message = event.get("message")
        if isinstance(message, dict) and "seq" in message:
            seq = int(message["seq"])
            if kind in FINAL:
                self.offsets.pop(seq, None)
                self.seqs.pop(str(message.get("id")), None)
            elif seq <= self.after_seq and seq not in self.offsets:
                return None  # a message.created already seen
            self.after_seq = max(self.after_seq, seq)
        return event


async def watch(transport: Transport, session_id: str, *, from_seq: int = 0,
                ping_timeout_s: float = 30.0) -> AsyncIterator[Event]:
    """Every event of the session after ``from_seq``, live, until the consumer stops.

    Reconnects with back-off after a dropped connection (``RetryPolicy.attempts`` failed
    connections in a row raise :class:`ConnectionFailed`); an ``error`` frame raises.
    """
    position = Position(after_seq=from_seq)
    url = f"{transport.base_url}/api/v1/sessions/{session_id}/ws"
    failures = 0
    while True:
        if failures:
            if failures >= transport.retry.attempts:
                raise ConnectionFailed(f"watching session {session_id}: {failures} "
                                       "connections in a row failed")
            await asyncio.sleep(transport.retry.backoff_s(failures))
        try:
            ws = await transport.http.ws_connect(url, heartbeat=ping_timeout_s, max_msg_size=0)
        except ChatStorageError:
            raise
        except aiohttp.WSServerHandshakeError as exc:
            error = refused(exc)
            if error is not None:
                raise error from exc
            failures += 1
            continue
        except (aiohttp.ClientError, OSError, TimeoutError):
            failures += 1
            continue
        try:
            await ws.send_str(_json.dumps(position.subscribe_frame()))
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                failures = 0
                event = _json.loads(msg.data)
                if event.get("type") == "error":
                    raise from_body(0, event)
                handed = position.take(event)
                if handed is not None:
                    yield handed
            if ws.close_code in FATAL_CLOSE_CODES:
                raise ConnectionFailed(f"the server closed the watch with {ws.close_code}")
        except (aiohttp.ClientError, OSError):
            pass
        finally:
            await ws.close()
        failures += 1
