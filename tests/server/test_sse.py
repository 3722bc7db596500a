"""``GET …/events``: a session's events as Server-Sent Events, resumed exactly by Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.conftest import Tenant
from tests.support.streamkit import (
    DEADLINE_S,
    connect,
    new_session,
    rebuild,
    recv_until,
    start,
)


async def _events(resp: aiohttp.ClientResponse,
                  until: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """SSE events (``id``, ``event``, ``data`` parsed) up to the first that satisfies ``until``."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(DEADLINE_S):
        while True:
            block = await resp.content.readuntil(b"\n\n")
            fields: dict[str, Any] = {}
            for line in block.decode().split("\n"):
                if line and not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    fields[name] = value
            if "data" not in fields:
                continue  # retry hint or keep-alive
            fields["data"] = json.loads(fields["data"])
            assert fields["event"] == fields["data"]["type"]
            out.append(fields)
            if until(fields):
                return out


async def _sync(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_json({"type": "ping", "ref": "sync"})
    await recv_until(ws, lambda f: f.get("ref") == "sync")


async def test_sse_serves_the_same_events(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    resp = await client.get(f"/api/v1/sessions/{sid}/events", headers=tenant.headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    producer = await connect(client, tenant, sid)
    await producer.send_json({"type": "message.create", "ref": "q", "role": "user",
                              "content": "question"})
    stream_id = (await start(producer))["stream_id"]
    for part in ("a", "bc", "def"):
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": part})
    await producer.send_json({"type": "stream.end", "stream_id": stream_id})
    events = await _events(resp, lambda e: e["event"] == "stream.completed")
    assert [e["event"] for e in events] == [
        "message.created", "stream.started", "stream.delta", "stream.delta", "stream.delta",
        "stream.completed"]
    # the id is the position after the event: messages up to seq, then seq:offset per stream
    assert [e["id"] for e in events] == ["1", "2,2:0", "2,2:1", "2,2:3", "2,2:6", "2"]
    assert rebuild([e["data"] for e in events], stream_id) == "abcdef"
    resp.close()


async def test_sse_resumes_exactly_with_last_event_id(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    producer = await connect(client, tenant, sid)
    stream_id = (await start(producer))["stream_id"]
    resp = await client.get(f"/api/v1/sessions/{sid}/events", headers=tenant.headers)
    sent = ""
    for i in range(5):
        sent += f"<{i}>"
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                  "delta": f"<{i}>"})
    # deltas, or a snapshot then deltas: the id says when all of it is in
    first = await _events(resp, lambda e: e["id"] == f"1,1:{len(sent)}")
    resp.close()
    assert rebuild([e["data"] for e in first], stream_id) == sent
    last_id = first[-1]["id"]
    for i in range(5, 9):
        sent += f"<{i}>"
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                  "delta": f"<{i}>"})
    await _sync(producer)
    # back: exactly the missing text, from the offset it had, then live
    resp = await client.get(f"/api/v1/sessions/{sid}/events",
                            headers={**tenant.headers, "Last-Event-ID": last_id})
    again = await _events(resp, lambda e: True)
    assert again[0]["data"] == {"type": "stream.delta", "stream_id": stream_id,
                                "offset": 15, "delta": sent[15:]}
    await producer.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "!"})
    await producer.send_json({"type": "stream.end", "stream_id": stream_id})
    rest = await _events(resp, lambda e: e["event"] == "stream.completed")
    resp.close()
    text = sent[:15] + "".join(e["data"]["delta"] for e in again + rest
                               if e["event"] == "stream.delta")
    assert text == sent + "!" == rest[-1]["data"]["message"]["content"]
    # the stream ended while away: the final event, then nothing old again
    resp = await client.get(f"/api/v1/sessions/{sid}/events",
                            headers={**tenant.headers, "Last-Event-ID": rest[-2]["id"]})
    final = await _events(resp, lambda e: True)
    assert final[0]["event"] == "stream.completed" and final[0]["id"] == "1"
    resp.close()


async def test_sse_after_seq_and_bad_last_event_id(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    for text in ("one", "two", "three"):
        r = await client.post(f"/api/v1/sessions/{sid}/messages",
                              json={"role": "user", "content": text}, headers=tenant.headers)
        assert r.status == 201
    resp = await client.get(f"/api/v1/sessions/{sid}/events?after_seq=1",
                            headers=tenant.headers)
    events = await _events(resp, lambda e: e["id"] == "3")
    assert [e["data"]["message"]["content"] for e in events] == ["two", "three"]
    resp.close()
    r = await client.get(f"/api/v1/sessions/{sid}/events",
                         headers={**tenant.headers, "Last-Event-ID": "x;drop"})
    assert r.status == 400
    assert (await r.json())["errors"][0]["field"] == "Last-Event-ID"


async def test_sse_with_a_ticket_and_tenancy(client: Any, tenant: Tenant,
                                             other_tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    r = await client.get(f"/api/v1/sessions/{sid}/events", headers=other_tenant.headers)
    assert r.status == 404
    r = await client.post(f"/api/v1/sessions/{sid}/ws-tickets", headers=tenant.headers)
    ticket = (await r.json())["ticket"]
    resp = await client.get(f"/api/v1/sessions/{sid}/events?ticket={ticket}")
    assert resp.status == 200
    r = await client.post(f"/api/v1/sessions/{sid}/messages",
                          json={"role": "user", "content": "hi"}, headers=tenant.headers)
    events = await _events(resp, lambda e: True)
    assert events[0]["data"]["message"]["content"] == "hi"
    resp.close()
    r = await client.get(f"/api/v1/sessions/{sid}/events?ticket={ticket}")
    assert r.status == 403
