"""The rows ``bench_reads.py`` reads: loaded by binary ``COPY`` into the service's schema.

One tenant holds ``sessions`` sessions of ``per_session`` messages each (RAG-shaped:
user questions; assistant answers with retrieved context, usage, metadata; every 20th
answer rated, every 50th message with a linked attachment; 1 in 100 contains the word
:data:`SEARCH_WORD`), one session of ``deep`` messages, and one user with
``user_sessions`` sessions. The same rows of the ordinary sessions also go into
LangChain's ``PostgresChatMessageHistory`` table, as LangChain itself stores messages.
Ids are time-ordered like the service's UUIDv7, so the indexes grow as in production.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson

SEARCH_WORD = "zeppelin"
LANGCHAIN_TABLE = "langchain_history"
DEEP_USER = "deep-reader"
BUSY_USER = "many-chats"
_T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
_WORDS = ("retrieval", "passage", "citation", "vector", "index", "answer", "context",
          "france", "capital", "river", "budget", "invoice", "contract", "clause", "summary",
          "policy", "customer", "refund", "latency")
_COLUMNS = ("id", "tenant_id", "session_id", "seq", "parent_id", "role", "content",
            "sender_id", "context", "metadata", "usage", "feedback", "feedback_at", "status",
            "created_at", "completed_at")


@dataclasses.dataclass
class Loaded:
    """What was loaded: the ids the benchmark reads."""

    tenant_id: uuid.UUID
    sessions: list[uuid.UUID]
    deep_session: uuid.UUID
    messages: int


class _Ids:
    """Time-ordered UUIDs (48-bit milliseconds, then a counter), cheap to make in bulk."""

    def __init__(self) -> None:
        self._n = 0
        self._ms = int(time.time() * 1000) << 80

    def __call__(self) -> uuid.UUID:
        self._n += 1
        return uuid.UUID(int=self._ms | (0x7 << 76) | (0x2 << 62) | self._n)


def _content(i: int, role: str) -> str:
    words = " ".join(_WORDS[(i * 7 + k) % len(_WORDS)] for k in range(12 if role == "user"
                                                                       else 60))
    marker = f" {SEARCH_WORD}" if i % 100 == 0 else ""
    return f"{words}{marker} #{i}"


def _rows(tenant: uuid.UUID, session: uuid.UUID, count: int, first: int, ids: _Ids,
          attachments: list[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    for seq in range(1, count + 1):
        i = first + seq
        role = "user" if seq % 2 else "assistant"
        at = _T0 + dt.timedelta(seconds=i)
        answer = role == "assistant"
        mid = ids()
        if i % 50 == 0:
            attachments.append((ids(), tenant, session, mid, f"doc-{i}.pdf", "application/pdf",
                                1000 + i, "ab" * 32, f"{tenant}/{mid}", "ready", at, 0))
        yield (
            mid, tenant, session, seq, None, role, _content(i, role),
            None if answer else "user-1",
            orjson.dumps([{"source": f"kb/doc-{i % 97}.md", "chunk": i % 13,
                           "score": 0.5 + (i % 50) / 100}]).decode() if answer else None,
            orjson.dumps({"model": "gpt-bench", "latency_ms": i % 900}).decode() if answer
            else "{}",
            orjson.dumps({"prompt_tokens": 800 + i % 100, "completion_tokens": 90,
                          "total_tokens": 890 + i % 100}).decode() if answer else None,
            '{"rating": 1}' if answer and i % 20 == 1 else None,
            at if answer and i % 20 == 1 else None,
            "complete", at, at + dt.timedelta(milliseconds=900) if answer else None,
        )


async def load(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, sessions: int,
               per_session: int, deep: int, user_sessions: int,
               langchain: bool) -> Loaded:
    """Load the rows on ``conn`` (a connection without the service's JSON codecs)."""
    ids = _Ids()
    ordinary = [ids() for _ in range(sessions)]
    deep_session = ids()
    busy = [ids() for _ in range(user_sessions)]
    session_rows = [
        (sid, tenant_id, f"user{n % 1000}", f"chat {n}", per_session, per_session,
         _T0 + dt.timedelta(seconds=(n + 1) * per_session))
        for n, sid in enumerate(ordinary)
    ]
    session_rows.append((deep_session, tenant_id, DEEP_USER, "deep", deep, deep,
                         _T0 + dt.timedelta(seconds=deep)))
    session_rows += [(sid, tenant_id, BUSY_USER, f"busy {n}", 0, 0,
                      _T0 + dt.timedelta(seconds=n)) for n, sid in enumerate(busy)]
    await conn.copy_records_to_table(
        "sessions", records=session_rows,
        columns=("id", "tenant_id", "user_id", "title", "message_count", "last_seq",
                 "activity_at"))
    attachments: list[tuple[Any, ...]] = []

    def messages(ids: _Ids, with_deep: bool) -> Iterator[tuple[Any, ...]]:
        for n, sid in enumerate(ordinary):
            yield from _rows(tenant_id, sid, per_session, n * per_session, ids, attachments)
        if with_deep:
            yield from _rows(tenant_id, deep_session, deep, sessions * per_session, ids,
                             attachments)

    # generated while copied: a million rows never sit in memory at once
    await conn.copy_records_to_table("messages", records=messages(ids, True),
                                     columns=_COLUMNS)
    await conn.copy_records_to_table(
        "attachments", records=attachments,
        columns=("id", "tenant_id", "session_id", "message_id", "name", "mime", "size",
                 "sha256", "object_key", "status", "created_at", "link_pos"))
    if langchain:  # the same rows again (other message ids, which LangChain does not keep)
        await _load_langchain(conn, messages(_Ids(), False))
    await conn.execute("VACUUM ANALYZE")
    return Loaded(tenant_id, ordinary, deep_session, sessions * per_session + deep)


async def _load_langchain(conn: asyncpg.Connection, rows: Iterator[tuple[Any, ...]]) -> None:
    """The same messages as LangChain stores them (``message_to_dict``), in its table."""
    await conn.execute(f"""
        CREATE TABLE {LANGCHAIN_TABLE} (
            id SERIAL PRIMARY KEY, session_id UUID NOT NULL, message JSONB NOT NULL,
            created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW());
        CREATE INDEX idx_{LANGCHAIN_TABLE}_session_id ON {LANGCHAIN_TABLE} (session_id);
    """)  # the schema of langchain_postgres' create_tables

    def as_langchain(row: tuple[Any, ...]) -> tuple[Any, ...]:
        kind = "human" if row[5] == "user" else "ai"
        data: dict[str, Any] = {"content": row[6], "additional_kwargs": {},
                                "response_metadata": {}, "type": kind, "name": None,
                                "id": None}
        if kind == "ai":
            data.update(tool_calls=[], invalid_tool_calls=[], usage_metadata=None)
        return (row[2], orjson.dumps({"type": kind, "data": data}).decode(), row[14])

    await conn.copy_records_to_table(
        LANGCHAIN_TABLE, records=(as_langchain(r) for r in rows),
        columns=("session_id", "message", "created_at"))
