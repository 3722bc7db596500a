"""A tenant's PII policy as the write paths need it: its redactor, or ``None``.

Looked up once per tenant and kept for ``ttl_s`` (like API keys: a `tenants update`
reaches every server within that time). A tenant without ``redact_pii`` costs a dict
lookup per write and nothing else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from chat_storage.storage import db
from chat_storage.storage.messages import NewMessage
from chat_storage.storage.redaction import PatternError, Redactor

# a message longer than this is redacted on a worker thread, not on the event loop
INLINE_CHARS = 16_384


async def load_redactor(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                        phone_region: str) -> Redactor | None:
    """The redactor of tenant ``tenant_id``, or ``None`` if it does not redact (or is gone).

    A stored pattern that no longer compiles (a newer Python's ``re``) is left out
    rather than stopping the tenant's writes; the built-in kinds still apply.
    """
    row = await conn.fetchrow(
        "SELECT redact_pii, pii_patterns FROM tenants WHERE id = $1", tenant_id)
    if row is None or not row["redact_pii"]:
        return None
    patterns: dict[str, str] = {}
    for name, source in dict(row["pii_patterns"]).items():
        try:
            Redactor.build(phone_region, {name: source})
        except PatternError:
            continue
        patterns[name] = source
    return Redactor.build(phone_region, patterns)


class Policies:
    """Each tenant's redactor, cached for ``ttl_s``; at most ``max_entries`` tenants."""

    def __init__(self, pool: asyncpg.Pool, *, phone_region: str, ttl_s: float,
                 max_entries: int = 10_000, acquire_timeout_s: float = 2.0) -> None:
        self._pool = pool
        self.acquire_timeout_s = acquire_timeout_s
        self.phone_region = phone_region
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._cache: dict[uuid.UUID, tuple[float, Redactor | None]] = {}

    async def redactor(self, tenant_id: uuid.UUID) -> Redactor | None:
        """The redactor of tenant ``tenant_id`` (``None``: it stores what it is given)."""
        hit = self._cache.get(tenant_id)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        # a busy pool answers 503 (Unavailable) like the write it precedes, never waits
        found = await db.call(
            self._pool, lambda conn: load_redactor(conn, tenant_id, self.phone_region),
            acquire_timeout_s=self.acquire_timeout_s)
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[tenant_id] = (now + self.ttl_s, found)
        return found

    async def apply(self, tenant_id: uuid.UUID,
                    messages: Sequence[NewMessage]) -> Sequence[NewMessage]:
        """``messages`` as tenant ``tenant_id`` stores them: redacted if it redacts PII
        (the same objects, untouched, if it does not)."""
        redactor = await self.redactor(tenant_id)
        if redactor is None:
            return messages
        size = sum(len(m.content) for m in messages)
        if size <= INLINE_CHARS:
            return [redact_message(m, redactor) for m in messages]
        return await asyncio.to_thread(lambda: [redact_message(m, redactor) for m in messages])

    async def title(self, tenant_id: uuid.UUID, title: str) -> str:
        """A session title (or an attachment's name) as tenant ``tenant_id`` stores it
        (titles are often made from the first question, personal data included)."""
        redactor = await self.redactor(tenant_id) if title else None
        return title if redactor is None else redactor.redact(title)

    async def metadata(self, tenant_id: uuid.UUID,
                       metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        """A message's metadata as tenant ``tenant_id`` stores it (a ``PATCH``'s, a
        stream's end): every string value in it redacted."""
        redactor = await self.redactor(tenant_id) if metadata else None
        return metadata if redactor is None else redact_metadata(metadata, redactor)

    def forget(self) -> None:
        """Drop every cached policy (the next write of each tenant reads it again)."""
        self._cache.clear()


def redact_metadata(metadata: dict[str, Any] | None,
                    redactor: Redactor) -> dict[str, Any] | None:
    """``metadata`` with every string value redacted, nested ones too (bounded depth:
    ``redaction.MAX_DEPTH``); its keys and non-string values kept."""
    if not metadata:
        return metadata
    redacted: dict[str, Any] = redactor.redact_json(metadata)
    return redacted


def redact_message(message: NewMessage, redactor: Redactor) -> NewMessage:
    """``message`` with its content, the titles and snippets of its context and the
    string values of its metadata and of its tool calls' arguments redacted (usage, ids
    and the names of tools are kept as they are)."""
    context = message.context
    if context:
        context = [{**item, **{f: redactor.redact(item[f]) for f in ("title", "snippet")
                               if isinstance(item.get(f), str)}} for item in context]
    tool_calls = message.tool_calls
    if tool_calls:
        tool_calls = redact_tool_calls(tool_calls, redactor)
    return dataclasses.replace(message, content=redactor.redact(message.content),
                               context=context, tool_calls=tool_calls,
                               metadata=redact_metadata(message.metadata, redactor) or {})


def redact_tool_calls(tool_calls: Sequence[Mapping[str, Any]],
                      redactor: Redactor) -> list[dict[str, Any]]:
    """``tool_calls`` with every string value in their ``arguments`` redacted, at any
    depth (the model wrote them from the conversation: an e-mail address to look up is
    personal data like the question it came from). Keys, ids and names are kept."""
    return [{**call, "arguments": redactor.redact_json(call["arguments"])}
            for call in tool_calls]
