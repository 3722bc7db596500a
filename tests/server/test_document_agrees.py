"""Where schemathesis found the server and /openapi.json disagreeing (issue 17, finding 11),
each pinned on its own: the run itself is tests/server/test_schemathesis.py."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Tenant
from tests.server.test_edges import assert_error
from tests.support.streamkit import new_session

SESSIONS = "/api/v1/sessions"


async def document(client: Any) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status == 200
    doc: dict[str, Any] = await r.json()
    return doc


async def test_allow_of_the_batch_route_lists_only_its_methods(client: Any,
                                                               tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    path = f"{SESSIONS}/{sid}/messages/batch"
    documented = {m.upper() for m in
                  (await document(client))["paths"][f"{SESSIONS}/{{session_id}}/messages/batch"]}
    r = await client.get(path, headers=tenant.headers)
    await assert_error(r, 405, "Method Not Allowed", path, "not_found")
    assert set(r.headers["Allow"].split(",")) == documented == {"POST"}


async def test_patch_favorite_takes_only_a_boolean(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    for value in (0, 1, "true", None):
        r = await client.patch(f"{SESSIONS}/{sid}", json={"favorite": value},
                               headers=tenant.headers)
        body = await assert_error(r, 400, "Bad Request", f"{SESSIONS}/{sid}", "validation_failed")
        assert [e["field"] for e in body["errors"]] == ["favorite"]
    schema = (await document(client))["components"]["schemas"]["SessionUpdate"]
    # what the route refuses, the document does not offer
    assert schema["properties"]["favorite"] == {"title": "Favorite", "type": "boolean"}


async def test_every_export_format_s_media_type_is_documented(client: Any,
                                                              tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    content = (await document(client))["paths"][f"{SESSIONS}/{{session_id}}/export"][
        "get"]["responses"]["200"]["content"]
    for fmt in ("json", "jsonl", "markdown"):
        r = await client.get(f"{SESSIONS}/{sid}/export", params={"format": fmt},
                             headers=tenant.headers)
        assert r.status == 200
        assert r.content_type in content, (fmt, r.content_type, list(content))
        await r.read()


async def test_sse_events_are_documented_as_events(client: Any, tenant: Tenant) -> None:
    schema = (await document(client))["paths"][f"{SESSIONS}/{{session_id}}/events"]["get"][
        "responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"event", "data", "id", "retry"}


async def test_sse_with_the_largest_after_seq_answers_and_stays_open(client: Any,
                                                                     tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    r = await client.get(f"{SESSIONS}/{sid}/events", params={"after_seq": str(2**63 - 1)},
                         headers=tenant.headers)
    assert r.status == 200
    first = await asyncio.wait_for(r.content.readline(), 10)
    assert first.startswith(b"retry:")
    # no error event follows and the stream is not cut (an absence: watched for 2 s)
    await client.post(f"{SESSIONS}/{sid}/messages", json={"role": "user", "content": "x"},
                      headers=tenant.headers)
    seen = b""
    try:
        async with asyncio.timeout(2):
            while True:
                line = await r.content.readline()
                assert line, seen  # the stream was cut
                assert b"event: error" not in line, seen
                seen += line
    except TimeoutError:
        pass
    r.close()


async def test_tool_calls_are_documented_as_served(client: Any, tenant: Tenant) -> None:
    schemas = (await document(client))["components"]["schemas"]
    create, message = schemas["MessageCreate"]["properties"], schemas["Message"]["properties"]
    assert {"tool_calls", "tool_call_id"} <= set(create) & set(message)
    assert {"tool_calls", "tool_call_id"} <= set(schemas["Message"]["required"])
    call = schemas["ToolCall"]
    assert set(call["required"]) == {"id", "name", "arguments"}
    assert call["properties"]["arguments"]["type"] == "object"
    assert call["additionalProperties"] is False
    # what the document offers, the server takes and gives back
    sid = await new_session(client, tenant)
    body = {"role": "assistant", "content": "",
            "tool_calls": [{"id": "c1", "name": "f", "arguments": {"x": 1}}]}
    r = await client.post(f"{SESSIONS}/{sid}/messages", json=body, headers=tenant.headers)
    assert r.status == 201
    made = await r.json()
    assert set(message) == set(made)
    assert made["tool_calls"] == body["tool_calls"] and made["tool_call_id"] is None
    r = await client.get("/asyncapi.json")
    components = (await r.json())["components"]
    end = next(m for m in components["messages"].values() if m.get("name") == "stream.end")
    ref = end["payload"]["$ref"].rsplit("/", 1)[-1]
    assert "tool_calls" in components["schemas"][ref]["properties"]
    assert end["examples"][0]["payload"]["tool_calls"][0]["name"] == "search_docs"


async def test_ui_streams_are_documented_with_their_marker_header(client: Any,
                                                                  tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    paths = (await document(client))["paths"]
    message_route = paths[f"{SESSIONS}/{{session_id}}/messages/{{message_id}}/ui-stream"]["get"]
    session_route = paths[f"{SESSIONS}/{{session_id}}/ui-stream"]["get"]
    for op in (message_route, session_route):
        ok = op["responses"]["200"]
        assert "text/event-stream" in ok["content"]
        assert "x-vercel-ai-ui-message-stream" in ok["headers"]
        assert op["x-token-scope"] == "stream"
    assert "204" in session_route["responses"] and "204" not in message_route["responses"]
    r = await client.get(f"{SESSIONS}/{sid}/ui-stream", headers=tenant.headers)
    assert r.status == 204  # documented: no answer in progress
