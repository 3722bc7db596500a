"""The served AsyncAPI document is valid AsyncAPI 3 and describes the frames the server
parses and sends: checked against the frame models, the server's source, and the
frames a running server sends over real WebSocket and SSE connections.

No AsyncAPI validator on PyPI ships the official 3.0 JSON Schema for offline use, so
the structure is checked here against the 3.0.0 specification's required fields and
reference rules; the payload schemas are checked as JSON Schema draft-07 (AsyncAPI's
default schema format) with ``jsonschema``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from chat_storage.actors.live import events
from chat_storage.runtime.settings import Settings
from chat_storage.server import asyncapi, frames, frames_sent
from chat_storage.server.app import create_app
from tests.conftest import Tenant
from tests.server.framecensus import sent_frame_types
from tests.support import documents
from tests.support.streamkit import DEADLINE_S, connect, new_session, recv_until, start

DOC_URI = "urn:chat-storage:asyncapi"
COMPONENT_KEY = re.compile(r"^[a-zA-Z0-9.\-_]+$")
# the fields the AsyncAPI 3.0.0 specification allows on each object (no x- extensions here)
TOP_FIELDS = {"asyncapi", "id", "info", "servers", "defaultContentType", "channels",
              "operations", "components"}
SERVER_FIELDS = {"host", "protocol", "protocolVersion", "pathname", "description", "title",
                 "summary", "variables", "security", "tags", "externalDocs", "bindings"}
CHANNEL_FIELDS = {"address", "messages", "title", "summary", "description", "servers",
                  "parameters", "tags", "externalDocs", "bindings"}
OPERATION_FIELDS = {"action", "channel", "title", "summary", "description", "security",
                    "tags", "externalDocs", "bindings", "traits", "messages", "reply"}
MESSAGE_FIELDS = {"headers", "payload", "correlationId", "contentType", "name", "title",
                  "summary", "description", "tags", "externalDocs", "bindings", "examples",
                  "traits"}
# JSON Schema keywords pydantic could emit that draft-07 (AsyncAPI's schema format) lacks
NOT_DRAFT7 = {"$defs", "prefixItems", "unevaluatedProperties", "unevaluatedItems",
              "dependentSchemas", "dependentRequired", "$anchor", "$dynamicRef"}


# ---------------------------------------------------------------- helpers

async def get_document(client: Any) -> dict[str, Any]:
    return await documents.get_document(client, "/asyncapi.json")


def pointer(doc: dict[str, Any], ref: str) -> Any:
    """The value a local ``$ref`` (``#/a/b``) points at; KeyError if none."""
    assert ref.startswith("#/"), f"not a local reference: {ref}"
    value: Any = doc
    for part in ref[2:].split("/"):
        value = value[part.replace("~1", "/").replace("~0", "~")]
    return value


def deref(doc: dict[str, Any], value: Any) -> Any:
    """``value``, with ``$ref`` followed until it is not a reference."""
    while isinstance(value, dict) and "$ref" in value:
        value = pointer(doc, value["$ref"])
    return value


def refs(value: Any) -> Iterator[str]:
    """Every ``$ref`` string anywhere in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def keywords(schema: Any) -> Iterator[str]:
    """Every key of every object in a schema (names under ``properties`` too: harmless)."""
    if isinstance(schema, dict):
        for key, item in schema.items():
            yield key
            yield from keywords(item)
    elif isinstance(schema, list):
        for item in schema:
            yield from keywords(item)


def messages_of(doc: dict[str, Any], side: str) -> dict[str, dict[str, Any]]:
    """``{frame type: message}`` of the ``client`` or ``server`` frames."""
    return {m["name"]: m for key, m in doc["components"]["messages"].items()
            if key.startswith(side + ".")}


def validator(doc: dict[str, Any], message: dict[str, Any]) -> Draft7Validator:
    """A validator of ``message``'s payload, resolving references within ``doc``."""
    registry: Registry[Any] = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT7))
    return Draft7Validator({"$ref": DOC_URI + message["payload"]["$ref"]}, registry=registry)


def undocumented(doc: dict[str, Any], schema: dict[str, Any], value: Any,
                 where: str = "") -> list[str]:
    """Keys of ``value`` (and of the objects in it) that ``schema`` does not name.

    The schemas of server frames allow unknown fields, as additive versions need; the
    server's own frames must still carry nothing the document does not describe.
    """
    while "$ref" in schema:
        schema = pointer(doc, schema["$ref"])
    out: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        out += [f"{where}.{k}" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                out += undocumented(doc, props[k], v, f"{where}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            out += undocumented(doc, schema["items"], v, f"{where}[{i}]")
    elif "anyOf" in schema and value is not None:
        for branch in schema["anyOf"]:
            if branch != {"type": "null"}:
                out += undocumented(doc, branch, value, where)
                break
    return out


def check_frame(doc: dict[str, Any], channel: str, frame: dict[str, Any]) -> None:
    """``frame`` (sent by the server on ``channel``) is a documented message of that channel."""
    kind = frame["type"]
    names = {deref(doc, ref)["name"]: deref(doc, ref)
             for key, ref in doc["channels"][channel]["messages"].items()
             if key.startswith("server.")}
    assert kind in names, f"the server sent {kind!r}, which {channel} does not document"
    message = names[kind]
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
              for e in validator(doc, message).iter_errors(frame)]
    assert not errors, f"{kind} does not match the document: {errors} in {frame}"
    extra = undocumented(doc, message["payload"], frame)
    assert not extra, f"{kind} carries fields the document does not name: {extra}"


# ---------------------------------------------------------------- the document itself

async def test_document_is_served_without_a_key_and_built_once(client: Any) -> None:
    first = await client.get("/asyncapi.json")
    second = await client.get("/asyncapi.json")
    assert first.status == second.status == 200
    assert await first.read() == await second.read()
    openapi = await (await client.get("/openapi.json")).json()
    assert openapi["paths"]["/asyncapi.json"]["get"]["security"] == []


async def test_document_is_structurally_valid_asyncapi_3(client: Any) -> None:
    doc = await get_document(client)
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc) <= TOP_FIELDS, set(doc) - TOP_FIELDS
    assert isinstance(doc["info"]["title"], str) and isinstance(doc["info"]["version"], str)
    for name, server in doc["servers"].items():
        assert set(server) <= SERVER_FIELDS, (name, set(server) - SERVER_FIELDS)
        assert server["host"] and server["protocol"], name
        for var in re.findall(r"\{(\w+)\}", server["host"]):
            assert "default" in server["variables"][var], (name, var)
    for name, channel in doc["channels"].items():
        assert set(channel) <= CHANNEL_FIELDS, (name, set(channel) - CHANNEL_FIELDS)
        assert channel["address"].startswith("/api/v1/"), name
        for param in re.findall(r"\{(\w+)\}", channel["address"]):
            assert param in channel["parameters"], (name, param)
        for server in channel["servers"]:
            assert server["$ref"].startswith("#/servers/"), server
        assert channel["messages"], name
    for name, op in doc["operations"].items():
        assert set(op) <= OPERATION_FIELDS, (name, set(op) - OPERATION_FIELDS)
        assert op["action"] in ("send", "receive"), name
        channel_ref = op["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), name
        # an operation's messages must be messages of its channel (spec 3.0.0)
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), (name, message)
        if "reply" in op:
            reply_channel = op["reply"]["channel"]["$ref"]
            for message in op["reply"]["messages"]:
                assert message["$ref"].startswith(reply_channel + "/messages/"), (name, message)
    components = doc["components"]
    for section, entries in components.items():
        for key in entries:
            assert COMPONENT_KEY.match(key), f"components.{section} key {key!r}"
    for key, message in components["messages"].items():
        assert set(message) <= MESSAGE_FIELDS, (key, set(message) - MESSAGE_FIELDS)
        assert "$ref" in message["payload"], key
    for key, scheme in components["securitySchemes"].items():
        assert scheme["type"] == "httpApiKey" and scheme["in"] in ("header", "query"), key
    for name, schema in components["schemas"].items():
        Draft7Validator.check_schema(schema)
        assert not NOT_DRAFT7 & set(keywords(schema)), (name, NOT_DRAFT7 & set(keywords(schema)))
    dangling = []
    for ref in set(refs(doc)):
        try:
            pointer(doc, ref)
        except (KeyError, IndexError):
            dangling.append(ref)
    assert not dangling, f"references that resolve to nothing: {sorted(dangling)}"


async def test_docs_page_links_the_document(client: Any) -> None:
    html = await (await client.get("/docs")).text()
    assert 'href="asyncapi.json"' in html  # relative: /docs → /asyncapi.json


# ---------------------------------------------------------------- against the frame models

async def test_every_client_frame_is_documented_with_the_schema_of_its_model(
    client: Any
) -> None:
    doc = await get_document(client)
    documented = messages_of(doc, "client")
    # what the WebSocket handler accepts: the pydantic models, and the hand-parsed delta
    accepted = {*frames.MODELS, "stream.delta"}
    assert set(documented) == accepted
    for kind, message in documented.items():
        model = frames.CLIENT_FRAMES[kind]
        schema = model.model_json_schema(ref_template=asyncapi.REF_TEMPLATE, mode="validation")
        for name, definition in schema.pop("$defs", {}).items():
            assert doc["components"]["schemas"][name] == definition, (kind, name)
        assert pointer(doc, message["payload"]["$ref"]) == schema, kind
        # the example is one the server's parser takes, as this very model
        (example,) = message["examples"]
        assert not list(validator(doc, message).iter_errors(example["payload"])), kind
        parsed = frames.parse(json.dumps(example["payload"]))
        if kind == "stream.delta":
            assert isinstance(parsed, frames.Delta)
        else:
            assert type(parsed) is model, kind
        # an unknown field is refused by both
        with pytest.raises(frames.BadFrame):
            frames.parse(json.dumps({**example["payload"], "surprise": 1}))
        assert list(validator(doc, message).iter_errors({**example["payload"], "surprise": 1}))


async def test_every_client_frame_has_an_operation_with_its_replies(client: Any) -> None:
    doc = await get_document(client)
    received = {}
    for op in doc["operations"].values():
        if op["action"] == "receive":
            for ref in op["messages"]:
                received[deref(doc, ref)["name"]] = op
    assert set(received) == set(frames.CLIENT_FRAMES)
    replies = {deref(doc, r)["name"] for r in received["message.create"]["reply"]["messages"]}
    assert replies == {"ack", "error"}


async def test_every_frame_type_the_server_sends_is_documented(client: Any) -> None:
    doc = await get_document(client)
    documented = set(messages_of(doc, "server"))
    assert documented == set(frames_sent.SERVER_FRAMES)
    census = sent_frame_types()
    kinds = census.kinds
    assert not census.unknown, f"frames whose type the census cannot read: {census.unknown}"
    # the census must see the frames it is known to build, or it reads nothing
    assert {"ack", "error", "pong", "stream.delta", "stream.interrupted"} <= kinds
    # built with dumps() but never written to a socket: the broker-only marker that tells
    # other replicas to reconcile a session's feed, which Fanout consumes (fanout.py)
    assert events.RECONCILE in kinds
    missing = kinds - documented - {events.RECONCILE}
    assert not missing, (f"the server sends {sorted(missing)} but /asyncapi.json does not "
                         "document it: add a model to frames_sent.SERVER_FRAMES")
    sse = {deref(doc, r)["name"]
           for r in doc["channels"][asyncapi.SSE_CHANNEL]["messages"].values()}
    assert sse == {*frames_sent.SESSION_EVENTS, "error"}


# ---------------------------------------------------------------- against a running server

class Recorder:
    """A WebSocket client that checks every frame it receives against the document."""

    def __init__(self, doc: dict[str, Any], ws: aiohttp.ClientWebSocketResponse) -> None:
        self.doc = doc
        self.ws = ws
        self.seen: set[str] = set()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_json(frame)

    async def until(self, pred: Any) -> list[dict[str, Any]]:
        got = await recv_until(self.ws, pred)
        for frame in got:
            check_frame(self.doc, asyncapi.WS_CHANNEL, frame)
            self.seen.add(frame["type"])
        return got

    async def reply(self, ref: str) -> dict[str, Any]:
        return (await self.until(lambda f: f.get("ref") == ref))[-1]


async def test_frames_of_a_running_server_match_the_document(
    aiohttp_client: Any, settings: Settings, tenant: Tenant
) -> None:
    client = await aiohttp_client(create_app(dataclasses.replace(settings, stream_grace_s=0.3)))
    doc = await get_document(client)
    sid = await new_session(client, tenant)
    watcher = Recorder(doc, await connect(client, tenant, sid))
    await watcher.send({"type": "subscribe", "after_seq": 0, "ref": "w"})
    writer = Recorder(doc, await connect(client, tenant, sid))

    await writer.send({"type": "message.create", "ref": "c1", "role": "user", "content": "hi",
                       "context": [{"source_id": "d", "score": 0.5}], "usage": {"model": "m"}})
    ack = await writer.reply("c1")
    assert ack["type"] == "ack"
    await watcher.until(lambda f: f["type"] == "message.created")

    stream_id = (await start(writer.ws, "s1", role="assistant"))["stream_id"]
    await writer.send({"type": "stream.delta", "stream_id": stream_id, "delta": "Hel"})
    await writer.send({"type": "ping", "ref": "p1"})
    assert (await writer.reply("p1"))["type"] == "pong"
    await watcher.until(lambda f: f["type"] == "stream.delta")
    late = Recorder(doc, await connect(client, tenant, sid))  # joins mid-stream
    await late.send({"type": "subscribe", "after_seq": 1})
    await late.until(lambda f: f["type"] == "stream.snapshot")
    await late.send({"type": "stream.resume", "ref": "r1", "stream_id": stream_id})
    assert (await late.reply("r1"))["type"] == "stream.resumed"
    await late.send({"type": "stream.end", "ref": "e1", "stream_id": stream_id,
                     "usage": {"completion_tokens": 1}})
    assert (await late.reply("e1"))["type"] == "stream.completed"
    await watcher.until(lambda f: f["type"] == "stream.completed")

    await writer.send({"type": "stream.end", "ref": "gone", "stream_id": stream_id})
    assert (await writer.reply("gone"))["type"] == "error"
    await writer.send({"type": "message.create", "ref": "bad", "role": "robot", "content": ""})
    assert (await writer.reply("bad"))["errors"]

    aborted = (await start(writer.ws, "s2"))["stream_id"]
    await writer.send({"type": "stream.abort", "ref": "a1", "stream_id": aborted})
    assert (await writer.reply("a1"))["type"] == "stream.aborted"
    await watcher.until(lambda f: f["type"] == "stream.aborted")

    await start(writer.ws, "s3")
    await writer.ws.close()  # the producer goes away; the grace period (0.3 s) ends
    await watcher.until(lambda f: f["type"] == "stream.interrupted")

    seen = watcher.seen | writer.seen | late.seen | {"stream.started"}  # start() reads it
    assert seen == set(frames_sent.SERVER_FRAMES), (
        f"frames the document has but this test never received: "
        f"{sorted(set(frames_sent.SERVER_FRAMES) - seen)}")
    for ws in (watcher.ws, late.ws):
        await ws.close()


async def test_sse_events_of_a_running_server_match_the_document(
    client: Any, tenant: Tenant
) -> None:
    doc = await get_document(client)
    sid = await new_session(client, tenant)
    resp = await client.get(f"/api/v1/sessions/{sid}/events", headers=tenant.headers)
    assert resp.status == 200
    producer = await connect(client, tenant, sid)
    await producer.send_json({"type": "message.create", "ref": "q", "role": "user",
                              "content": "question"})
    stream_id = (await start(producer))["stream_id"]
    await producer.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "a"})
    await producer.send_json({"type": "stream.end", "stream_id": stream_id})
    seen = []
    async with asyncio.timeout(DEADLINE_S):
        while "stream.completed" not in seen:
            block = (await resp.content.readuntil(b"\n\n")).decode()
            fields = dict(line.split(": ", 1) for line in block.strip().split("\n")
                          if line and not line.startswith(":") and ": " in line)
            if "data" not in fields:
                continue
            frame = json.loads(fields["data"])
            assert fields["event"] == frame["type"]
            check_frame(doc, asyncapi.SSE_CHANNEL, frame)
            seen.append(frame["type"])
    assert seen == ["message.created", "stream.started", "stream.delta", "stream.completed"]
    resp.close()
    await producer.close()
