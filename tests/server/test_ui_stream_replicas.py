"""``…/ui-stream`` on one replica follows an answer produced on another (one Postgres,
one Redis), from its beginning to its end, nothing missed or repeated."""

from __future__ import annotations

from typing import Any

from chat_storage.runtime.settings import Settings
from tests.conftest import Tenant
from tests.server.test_ui_stream import SESSIONS, _check_headers, _parts, _sync, _text
from tests.server.test_ws_replicas import _replicas
from tests.support.streamkit import connect, new_session, start


async def test_a_reader_on_another_replica_gets_the_whole_answer(
    aiohttp_client: Any, settings: Settings, tenant: Tenant
) -> None:
    a, b = await _replicas(aiohttp_client, settings)
    sid = await new_session(a, tenant)
    producer = await connect(a, tenant, sid)
    started = await start(producer, role="assistant")
    stream_id, mid = started["stream_id"], started["message_id"]
    sent = ""
    for i in range(40):  # past a checkpoint: Postgres holds part of it, Redis the rest
        piece = f"<{i}>" * 20
        sent += piece
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": piece})
    await _sync(producer)
    resp = await b.get(f"{SESSIONS}/{sid}/ui-stream", headers=tenant.headers)
    _check_headers(resp)
    head = await _parts(resp, until="text-delta")
    assert head[0] == {"type": "start", "messageId": mid}
    assert sent.startswith(_text(head)) and _text(head)  # the beginning, at once
    for i in range(10):
        piece = f"[{i}]"
        sent += piece
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": piece})
    await producer.send_json({"type": "stream.end", "stream_id": stream_id})
    rest = await _parts(resp)
    assert _text(head + rest) == sent
    assert rest[-2:] == [{"type": "finish", "finishReason": "stop"}, "[DONE]"]
    await producer.close()
