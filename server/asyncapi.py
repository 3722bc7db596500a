"""The AsyncAPI 3.0 document of a session's streams: its WebSocket and its Server-Sent Events.

Built from the models of :mod:`server.frames`: the client frames are the models the
WebSocket handler parses with, the server frames the models that describe what it
sends. Their JSON Schemas (``model_json_schema``; only keywords that JSON Schema
draft-07, AsyncAPI's default schema format, also has) go to ``components.schemas``;
every frame is a message in ``components.messages``, named ``client.<type>`` or
``server.<type>``. Operations are written from the server's side: it *receives* the
client frames (each with the frames that may answer it as its ``reply``) and *sends*
the session's events. The REST API is in ``/openapi.json``; the prose in
``docs/streaming.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pydantic
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from chat_storage.server import frames, frames_sent

ASYNCAPI_VERSION = "3.0.0"
API_VERSION = "1"
REF_TEMPLATE = "#/components/schemas/{model}"
JSON = "application/json"
WS_CHANNEL = "sessionWebSocket"
SSE_CHANNEL = "sessionEvents"
SESSION_PATH = "/api/v1/sessions/{session_id}"

# What may answer each client frame (besides the session's events, if subscribed).
_REPLIES: dict[str, tuple[str, ...]] = {
    "subscribe": ("error",),
    "message.create": ("ack", "error"),
    "stream.start": ("stream.started", "error"),
    "stream.delta": ("error",),
    "stream.end": ("stream.completed", "error"),
    "stream.abort": ("stream.aborted", "error"),
    "stream.resume": ("stream.resumed", "error"),
    "ping": ("pong", "error"),
}

# One valid frame of each client type (the tests parse each with the server's parser).
EXAMPLES: dict[str, dict[str, Any]] = {
    "subscribe": {"type": "subscribe", "after_seq": 41,
                  "streams": [{"seq": 41, "offset": 1337}]},
    "message.create": {"type": "message.create", "ref": "c1", "role": "user",
                       "content": "What does the contract say about seq?"},
    "stream.start": {"type": "stream.start", "ref": "s1", "role": "assistant",
                     "context": [{"source_id": "doc-7", "snippet": "seq is 1, 2, 3, …"}]},
    "stream.delta": {"type": "stream.delta", "stream_id": "0193a4b2-7c1e-7d10-8000-1234567890ab",
                     "delta": "Each message"},
    "stream.end": {"type": "stream.end", "ref": "e1",
                   "stream_id": "0193a4b2-7c1e-7d10-8000-1234567890ab",
                   "usage": {"model": "m-1", "completion_tokens": 42},
                   "tool_calls": [{"id": "call_1", "name": "search_docs",
                                   "arguments": {"query": "seq gaps"}}]},
    "stream.abort": {"type": "stream.abort", "stream_id": "0193a4b2-7c1e-7d10-8000-1234567890ab",
                     "reason": "stopped by the user"},
    "stream.resume": {"type": "stream.resume", "ref": "r1",
                      "stream_id": "0193a4b2-7c1e-7d10-8000-1234567890ab"},
    "ping": {"type": "ping", "ref": "p1"},
}

_SECURITY = [{"$ref": "#/components/securitySchemes/apiKey"},
             {"$ref": "#/components/securitySchemes/ticket"}]
_HOST = {"host": {"default": "localhost:8080",
                  "description": "Host and port the service is reached at."}}
_SESSION_PARAMETER = {"session_id": {"description": "The session's id (a UUID) of the "
                                                    "caller's tenant; another's answers 404."}}


def client_key(kind: str) -> str:
    """The ``components.messages`` key of the client frame ``kind``."""
    return f"client.{kind}"


def server_key(kind: str) -> str:
    """The ``components.messages`` key of the server frame ``kind``."""
    return f"server.{kind}"


def build_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``…/ws`` and ``…/events``."""
    schemas, payloads = _schemas()
    messages: dict[str, Any] = {}
    for kind, model in frames.CLIENT_FRAMES.items():
        messages[client_key(kind)] = _message(kind, model, payloads[(model, "validation")],
                                              EXAMPLES.get(kind))
    for kind, model in frames_sent.SERVER_FRAMES.items():
        messages[server_key(kind)] = _message(kind, model, payloads[(model, "serialization")])
    sse_keys = [server_key(k) for k in (*frames_sent.SESSION_EVENTS, "error")]
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "chat-storage session streams",
            "version": API_VERSION,
            "description": "A session's WebSocket (write, stream answers, subscribe) and its "
                           "Server-Sent Events (read only). Frames are JSON objects with a "
                           "`type`. The REST API is described by `/openapi.json`.",
        },
        "defaultContentType": JSON,
        "servers": {
            "ws": _server("ws", "WebSocket over plain HTTP (local use)."),
            "wss": _server("wss", "WebSocket over TLS."),
            "http": _server("http", "Server-Sent Events over plain HTTP (local use)."),
            "https": _server("https", "Server-Sent Events over TLS."),
        },
        "channels": {
            WS_CHANNEL: _ws_channel(messages),
            SSE_CHANNEL: _sse_channel(sse_keys),
        },
        "operations": _operations(sse_keys),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "messages": messages,
            "securitySchemes": {
                "apiKey": {"type": "httpApiKey", "in": "header", "name": "X-Api-Key",
                           "description": "The tenant's API key."},
                "ticket": {"type": "httpApiKey", "in": "query", "name": "ticket",
                           "description": "A single-use ticket (60 s) from `POST "
                                          f"{SESSION_PATH}/ws-tickets`, for browsers, "
                                          "which cannot set headers here."},
            },
        },
    }


def _schemas() -> tuple[dict[str, Any], dict[tuple[Any, str], dict[str, Any]]]:
    """Every frame model's schema, and the ``$ref`` of each (model, mode)."""
    wanted: list[tuple[type[pydantic.BaseModel], JsonSchemaMode]] = [
        *((m, "validation") for m in frames.CLIENT_FRAMES.values()),
        *((m, "serialization") for m in frames_sent.SERVER_FRAMES.values()),
    ]
    key_map, top = models_json_schema(wanted, ref_template=REF_TEMPLATE)
    refs = {(model, str(mode)): ref for (model, mode), ref in key_map.items()}
    return dict(top.get("$defs", {})), refs


def _message(kind: str, model: type[pydantic.BaseModel], payload: dict[str, Any],
             example: dict[str, Any] | None = None) -> dict[str, Any]:
    summary = (model.__doc__ or "").strip().split("\n")[0]
    message: dict[str, Any] = {"name": kind, "title": kind, "summary": summary,
                               "contentType": JSON, "payload": payload}
    if example is not None:
        message["examples"] = [{"name": kind, "payload": example}]
    return message


def _server(protocol: str, description: str) -> dict[str, Any]:
    return {"host": "{host}", "protocol": protocol, "description": description,
            "variables": _HOST, "security": _SECURITY}


def _ws_channel(messages: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": SESSION_PATH + "/ws",
        "title": "Session WebSocket",
        "description": (
            "JSON text frames both ways. Before the upgrade: the API key or a ticket, the "
            "`Origin` (allowed origins, or this server's own), the session (404) and the "
            "tenant's connection limit (429). A bad frame gets an `error` frame and the "
            "connection stays open. Close codes: 1001 server shutting down, 1008 binary "
            "frame, 1009 frame too large, 1013 the client read too slowly (subscribe "
            "again from its last seq), 4401 the credential no longer holds (API key "
            "revoked, token expired, token's signing key retired; the reason says which)."),
        "servers": [{"$ref": "#/servers/ws"}, {"$ref": "#/servers/wss"}],
        "parameters": _SESSION_PARAMETER,
        "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
        "bindings": {"ws": {
            "method": "GET",
            "query": {"type": "object", "properties": {"ticket": {"type": "string"}}},
            "headers": {"type": "object", "properties": {
                "X-Api-Key": {"type": "string"}, "Origin": {"type": "string"}}},
            "bindingVersion": "0.1.0",
        }},
    }


def _sse_channel(keys: Iterable[str]) -> dict[str, Any]:
    return {
        "address": SESSION_PATH + "/events",
        "title": "Session events (Server-Sent Events)",
        "description": (
            "The session's events, read only: each as `id: <position>`, `event: <type>` "
            "and `data: <the frame, as on the WebSocket>`. The position is `<seq>` (every "
            "message up to seq received) then `,<seq>:<offset>` per stream in progress; "
            "an EventSource sends the last one back as `Last-Event-ID` and gets exactly "
            "what it lacks (a malformed one gets 400). `?after_seq=N` starts elsewhere. "
            "`: keep-alive` comments keep the connection; a failure after the headers "
            "is one `error` event."),
        "servers": [{"$ref": "#/servers/http"}, {"$ref": "#/servers/https"}],
        "parameters": _SESSION_PARAMETER,
        "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in keys},
    }


def _operations(sse_keys: list[str]) -> dict[str, Any]:
    ws = {"$ref": f"#/channels/{WS_CHANNEL}"}
    operations: dict[str, Any] = {}
    for kind, model in frames.CLIENT_FRAMES.items():
        replies = _REPLIES.get(kind, ("error",))
        operations["receive" + _camel(kind)] = {
            "action": "receive",
            "channel": ws,
            "summary": (model.__doc__ or kind).strip().split("\n")[0],
            "messages": [_in(WS_CHANNEL, client_key(kind))],
            "reply": {"channel": ws,
                      "messages": [_in(WS_CHANNEL, server_key(r)) for r in replies]},
        }
    operations["sendSessionEvents"] = {
        "action": "send",
        "channel": ws,
        "summary": "After `subscribe`: committed messages after `after_seq`, snapshots of "
                   "answers in progress, then live events; each once and in order.",
        "messages": [_in(WS_CHANNEL, server_key(k)) for k in frames_sent.SESSION_EVENTS],
    }
    operations["sendSessionEventsOverSse"] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{SSE_CHANNEL}"},
        "summary": "The same events as the WebSocket's subscription, resumable with "
                   "Last-Event-ID.",
        "messages": [_in(SSE_CHANNEL, key) for key in sse_keys],
        "bindings": {"http": {
            "method": "GET",
            "query": {"type": "object", "properties": {
                "after_seq": {"type": "integer", "minimum": 0, "default": 0},
                "ticket": {"type": "string"}}},
            "bindingVersion": "0.3.0",
        }},
    }
    return operations


def _in(channel: str, key: str) -> dict[str, str]:
    return {"$ref": f"#/channels/{channel}/messages/{key}"}


def _camel(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("."))
