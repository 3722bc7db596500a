"""Fuzzing the WebSocket frame parser (hypothesis): garbage is a client error, never ours.

Every frame a client may send is drawn — valid frames with fields replaced by arbitrary
JSON, unknown types, deep nesting, integers past 64 bits, NUL characters, text that is
not JSON — and sent to a real server over a real socket. After each, a ``ping`` proves
the connection still answers, and no ``error`` frame may carry the code ``internal``
(issue 17, finding 2: 200 of them in a short fuzz).

Hypothesis drives synchronous test functions; it runs in a thread here and hands each
frame to the event loop that owns the server and the socket.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_storage.server.frames import CLIENT_FRAMES
from tests.conftest import Tenant
from tests.support.streamkit import connect, new_session, recv, recv_until, start

EXAMPLES = 300  # per strategy; the whole file runs in well under a minute here
FRAME_DEADLINE_S = 10.0

json_scalars = (st.none() | st.booleans() | st.text(max_size=20)
                | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.sampled_from(["\x00", "a\x00b", str(uuid.uuid4()), ""]))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)
FIELDS = sorted({name for model in CLIENT_FRAMES.values() for name in model.model_fields})


def deep(levels: int) -> str:
    return '{"type":"stream.start","metadata":' + '{"a":' * levels + "1" + "}" * levels + "}"


@st.composite
def frames(draw: st.DrawFn, stream_id: str) -> str:
    """One frame's text: most are objects with a known type and drawn fields."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.text(max_size=40))  # rarely JSON at all
    if kind == 1:
        return json.dumps(draw(json_values))
    if kind == 2:
        return deep(draw(st.integers(50, 400)))
    frame: dict[str, Any] = {"type": draw(st.sampled_from([*CLIENT_FRAMES, "nope", 5, None]))}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5, unique=True)):
        if name == "type":
            continue
        frame[name] = draw(st.sampled_from([stream_id]) | json_values) if name == "stream_id" \
            else draw(json_values)
    return json.dumps(frame)


async def exchange(ws: aiohttp.ClientWebSocketResponse, raw: str, n: int) -> list[dict[str, Any]]:
    """Send ``raw`` then a ping; every frame up to its pong (the connection answers)."""
    await ws.send_str(raw)
    await ws.send_json({"type": "ping", "ref": f"sync-{n}"})
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(FRAME_DEADLINE_S):
        while True:
            frame = await recv(ws)
            if frame == {"type": "pong", "ref": f"sync-{n}"}:
                return seen
            seen.append(frame)


async def test_fuzzed_frames_never_get_internal_and_the_connection_stays(
    client: Any, tenant: Tenant
) -> None:
    sid = await new_session(client, tenant)
    ws = await connect(client, tenant, sid)
    stream_id = (await start(ws, ref="fuzz"))["stream_id"]
    loop = asyncio.get_running_loop()
    counter = itertools.count()
    internal: list[tuple[str, dict[str, Any]]] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(raw=frames(stream_id))
    def fuzz(raw: str) -> None:
        replies = asyncio.run_coroutine_threadsafe(
            exchange(ws, raw, next(counter)), loop).result(FRAME_DEADLINE_S * 2)
        internal.extend((raw, r) for r in replies
                        if r.get("type") == "error" and r.get("code") == "internal")
        assert not internal, internal[:3]

    await asyncio.to_thread(fuzz)
    assert not ws.closed
    # still a working connection: a write is acked
    await ws.send_json({"type": "message.create", "ref": "after", "role": "user",
                        "content": "still here"})
    replies = await recv_until(ws, lambda f: f.get("ref") == "after")
    assert replies[-1]["type"] == "ack", replies[-1]
