"""Exports: a whole session as JSON, JSON Lines or Markdown; a user's history as JSON Lines.

Formats of ``GET /api/v1/sessions/{id}/export?format=``:

- ``json`` (default): one document ``{"session": {...}, "messages": [...],
  "attachments": [...]}``.
- ``jsonl``: the first line is ``{"type": "session", <session fields>}``, then one
  ``{"type": "message", <message fields>}`` line per message, in ``seq`` order, then one
  ``{"type": "attachment", <attachment fields>}`` line per attachment.
- ``markdown``: the title, a line about the session, then per message a heading
  ``## <seq> · <role>`` (with the status when not complete), the tool call a ``tool``
  message answers, its content verbatim, the tool calls it makes (name, id and
  arguments as JSON) and the RAG sources it was built from as numbered lists; then the
  attachments.

``GET /api/v1/users/{user_id}/export`` is JSON Lines: each of the user's sessions
(oldest first) as a ``session`` line followed by its ``message`` and ``attachment`` lines.
Attachments are described (name, type, size, SHA-256, message); their files stay in
the object store, each readable through ``GET …/attachments/{aid}``.

Both are streamed from one consistent snapshot (:mod:`storage.exports`) in bounded
pages. Errors before the first byte get the usual error body; once bytes are sent an
error can only cut the connection (the chunked body is left unterminated, so the client
sees a truncated download rather than a complete-looking, partial file).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from chat_storage.server.auth import principal_of
from chat_storage.server.handlers import actor_name, path_uuid, request_id, run
from chat_storage.server.inputs import check_user_id
from chat_storage.server.jsonio import dumps, parse_query
from chat_storage.server.routing import RouteTable
from chat_storage.server.schemas import Error, ExportQuery
from chat_storage.server.state import keyring_of
from chat_storage.storage import exports, sessions
from chat_storage.storage.audit_log import audit

log = logging.getLogger(__name__)

routes = RouteTable("exports")
CHUNK_BYTES = 64 * 1024
# A client that reads nothing for this long is cut off: it holds a database connection.
WRITE_TIMEOUT_S = 30.0
FORMATS = {  # format -> (media type, file extension)
    "json": ("application/json", "json"),
    "jsonl": ("application/x-ndjson", "jsonl"),
    "markdown": ("text/markdown", "md"),
}


class Out:
    """A streamed download: sent in chunks, started (headers sent) at the first chunk."""

    def __init__(self, request: web.Request, media_type: str, filename: str) -> None:
        self._request = request
        self._buffer = bytearray()
        self.response = web.StreamResponse(headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        })
        self.response.content_type = media_type
        self.response.charset = "utf-8"

    @property
    def started(self) -> bool:
        return self.response.prepared

    async def write(self, data: bytes) -> None:
        """Queue ``data``; send when a chunk's worth is buffered."""
        self._buffer += data
        if len(self._buffer) >= CHUNK_BYTES:
            await self._flush()

    async def finish(self) -> None:
        """Send what is buffered and end the body."""
        await self._flush()
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await self.response.write_eof()

    async def _flush(self) -> None:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            if not self.started:
                await self.response.prepare(self._request)
            if self._buffer:
                await self.response.write(bytes(self._buffer))
        self._buffer.clear()


Body = Callable[[asyncpg.Connection, Out], Awaitable[None]]
Audited = tuple[str, str, dict[str, Any]]  # action, target, details


async def stream(request: web.Request, out: Out, body: Body, audited: Audited,
                 **context: str) -> web.StreamResponse:
    """Run ``body`` in one read-only snapshot, writing to ``out``; then end the download.

    A download that started is audited (``audited``: action, target, details) once it
    ends, with whether it was complete; one refused before its first byte is not.
    """

    async def in_snapshot(conn: asyncpg.Connection) -> None:
        async with exports.snapshot(conn):
            await body(conn, out)

    complete = False
    try:
        await run(request, in_snapshot)
        await out.finish()
        complete = True
    except Exception:
        if not out.started:
            raise  # nothing sent yet: the client gets the error body
        log.warning("export cut short", exc_info=True, extra=context)
        if request.transport is not None:
            request.transport.close()
    action, target, details = audited
    try:
        await run(request, lambda conn: audit(
            conn, principal_of(request).tenant_id, actor_name(request), action, target,
            {**details, "complete": complete}, request_id(request)))
    except Exception:  # the download went out: say so in the log, not to the client
        log.error("export not audited", exc_info=True, extra=context)
    return out.response


@routes.get("/api/v1/sessions/{session_id}/export", query=ExportQuery,
            responses={200: ", ".join(media for media, _ in FORMATS.values()),
                       400: Error, 404: Error})
async def export_session(request: web.Request) -> web.StreamResponse:
    """Download a whole session as json, jsonl or markdown (streamed)."""
    session_id = path_uuid(request, "session_id", "session")
    fmt = parse_query(request, ExportQuery).format
    tenant_id = principal_of(request).tenant_id
    media_type, ext = FORMATS[fmt]

    async def body(conn: asyncpg.Connection, out: Out) -> None:
        session = await sessions.get(conn, tenant_id, session_id,  # 404 before any byte
                                     keyring_of(request))
        render = RENDERERS[fmt]
        await out.write(render.head(session))
        first = True
        async with contextlib.aclosing(exports.message_pages(
                conn, tenant_id, session_id, keyring=keyring_of(request))) as pages:
            async for page in pages:
                for message in page:
                    await out.write(render.message(message, first))
                    first = False
        await out.write(render.tail(
            await exports.session_attachments(conn, tenant_id, session_id)))

    out = Out(request, media_type, f"session-{session_id}.{ext}")
    return await stream(request, out, body, ("session.export", str(session_id), {"format": fmt}),
                        session_id=str(session_id))


@routes.get("/api/v1/users/{user_id}/export",
            responses={200: "application/x-ndjson", 400: Error})
async def export_user(request: web.Request) -> web.StreamResponse:
    """Download every session and message of a user as JSON Lines (streamed)."""
    user_id = check_user_id(request.match_info["user_id"])
    tenant_id = principal_of(request).tenant_id

    async def body(conn: asyncpg.Connection, out: Out) -> None:
        async with contextlib.aclosing(exports.user_sessions(
                conn, tenant_id, user_id, keyring=keyring_of(request))) as found:
            async for session in found:
                await out.write(_line("session", session))
                pages = exports.message_pages(conn, tenant_id, session["id"],
                                              keyring=keyring_of(request))
                async with contextlib.aclosing(pages):
                    async for page in pages:
                        for message in page:
                            await out.write(_line("message", message))
                await out.write(JsonLines.tail(
                    await exports.session_attachments(conn, tenant_id, session["id"])))

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", user_id)[:64]
    out = Out(request, FORMATS["jsonl"][0], f"user-{safe}-export.jsonl")
    return await stream(request, out, body, ("user.export", f"user:{user_id}", {}))


# ---------------------------------------------------------------- formats

def _line(kind: str, obj: dict[str, Any]) -> bytes:
    return dumps({"type": kind, **obj}) + b"\n"


class Json:
    @staticmethod
    def head(session: dict[str, Any]) -> bytes:
        return b'{"session":' + dumps(session) + b',"messages":['

    @staticmethod
    def message(message: dict[str, Any], first: bool) -> bytes:
        return dumps(message) if first else b"," + dumps(message)

    @staticmethod
    def tail(attachments: list[dict[str, Any]]) -> bytes:
        return b'],"attachments":' + dumps(attachments) + b"}"


class JsonLines:
    @staticmethod
    def head(session: dict[str, Any]) -> bytes:
        return _line("session", session)

    @staticmethod
    def message(message: dict[str, Any], first: bool) -> bytes:
        return _line("message", message)

    @staticmethod
    def tail(attachments: list[dict[str, Any]]) -> bytes:
        return b"".join(_line("attachment", a) for a in attachments)


class Markdown:
    @staticmethod
    def head(session: dict[str, Any]) -> bytes:
        title = _one_line(session["title"]) or "Untitled session"
        about = (f"Session {session['id']} · user {_one_line(session['user_id'])} · "
                 f"created {_time(session['created_at'])} · "
                 f"{session['message_count']} messages")
        return f"# {title}\n\n{about}\n".encode()

    @staticmethod
    def message(message: dict[str, Any], first: bool) -> bytes:
        status = "" if message["status"] == "complete" else f" ({message['status']})"
        parts = [f"\n## {message['seq']} · {message['role']}{status}\n\n"]
        if message["status"] == "deleted":
            parts.append("_(message deleted)_\n")
        else:
            if message.get("tool_call_id"):
                parts.append(f"In answer to tool call {_one_line(message['tool_call_id'])}.\n\n")
            parts.append(message["content"].rstrip("\n") + "\n")
        if message.get("tool_calls"):
            parts.append("\nTool calls:\n\n")
            parts.extend(_tool_call(i, call) for i, call in enumerate(message["tool_calls"], 1))
        if message["context"]:
            parts.append("\nSources:\n\n")
            parts.extend(_source(i, item) for i, item in enumerate(message["context"], 1))
        return "".join(parts).encode()

    @staticmethod
    def tail(attachments: list[dict[str, Any]]) -> bytes:
        if not attachments:
            return b""
        lines = ["\n## Attachments\n\n"]
        for a in attachments:
            where = ("not attached to a message" if a["message_id"] is None
                     else f"message {a['message_id']}")
            lines.append(f"- {_one_line(a['name'])} ({_one_line(a['mime'])}, {a['size']} bytes, "
                         f"{a['status']}, {where}; sha256 {a['sha256']})\n")
        return "".join(lines).encode()


RENDERERS: dict[str, type[Json] | type[JsonLines] | type[Markdown]] = {
    "json": Json, "jsonl": JsonLines, "markdown": Markdown,
}


def _source(n: int, item: dict[str, Any]) -> str:
    line = f"{n}. {_one_line(item.get('title') or item['source_id'])}"
    if item.get("uri"):
        line += f" <{_one_line(item['uri'])}>"
    about = [f"source {_one_line(item['source_id'])}"]
    if item.get("score") is not None:
        about.append(f"score {item['score']:.3g}")
    line += f" ({', '.join(about)})\n"
    if item.get("snippet"):
        line += "".join(f"   > {part}\n" for part in str(item["snippet"]).splitlines())
    return line


def _tool_call(n: int, call: dict[str, Any]) -> str:
    """A numbered item: the tool's name as code, the call's id, its arguments as JSON."""
    name = _one_line(call["name"]).replace("`", "'")
    return (f"{n}. `{name}` (call {_one_line(call['id'])})\n"
            f"   > {dumps(call['arguments']).decode()}\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")

