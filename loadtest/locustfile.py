"""Locust scenario: the traffic of a RAG chat UI (a load test; it prints figures, checks answers).

Each simulated user is one person in a chat UI with a ``user_id`` of their own. It opens
a new chat and asks a first question, then, with a think time between actions, runs
these tasks (weight: task, and the requests it sends, named as in locust's stats):

- 10 ``send_turn``: ``POST /api/v1/sessions/{session_id}/messages`` twice, the question
  and then the answer with its RAG ``context`` and ``usage``
- 8 ``read_history``: ``GET …/messages?order=desc`` (the newest page), then 0 to 3 older
  pages through ``GET …/messages?order=desc&cursor={cursor}``
- 3 ``list_sessions``: ``GET /api/v1/sessions?user_id={user_id}``; sometimes opens
  another of the user's chats
- 2 ``send_tool_turn``: ``POST …/messages/batch``, a question, the assistant's call of
  the retrieval tool, the tool's result and the answer stored together
- 2 ``search``: ``GET /api/v1/search?q={q}&user_id={user_id}``
- 1 ``new_chat``: ``POST /api/v1/sessions`` (one in ten is a temporary chat)
- 1 ``rename_or_star``: ``PATCH /api/v1/sessions/{session_id}``
- 1 ``give_feedback``: ``PATCH …/messages/{message_id}``, thumbs up or down
- 1 ``export``: ``GET …/export?format=jsonl``
- 1 ``attach_file``: ``POST …/attachments`` (announce a document), ``PUT {upload_url}``
  (the file, to the presigned URL, without the API key), ``POST
  …/attachments/{attachment_id}/complete``, then a question that links it

So writes and history reads make most of the traffic. ``GET
/api/v1/sessions/{session_id}`` appears only after a failure (see below).

A response is a failure when its status is not the one the API promises, or when it
contradicts what this user wrote: each user is the only writer of its sessions, so a
new message's ``seq`` must follow the last one acknowledged, the newest page of the
history must end there, and an export must hold exactly the acknowledged messages. (A
write whose answer was lost may still be stored; the next check of that session then
fails once, and the user reads the count back from ``GET /api/v1/sessions/{session_id}``.)
It expects the default ``CHAT_INGEST_MODE=sync`` (201 once committed, read after write);
under ``async`` every write answers 202 and counts as a failure.

Options of this scenario, on the command line or in the environment:

- ``--api-key`` or ``CHAT_LOADTEST_API_KEY``: the key every request carries (required).
- ``--think-s`` or ``CHAT_LOADTEST_THINK_S``: mean seconds a user waits between two
  actions (uniform in 0.5x to 1.5x; default 1.0); 0 sends back to back.

Run it against a server whose rate limit allows the load (the default allows 50
requests/s per key, and every simulated user shares the key):

    CHAT_LOADTEST_API_KEY=cs_... .venv/bin/locust -f loadtest/locustfile.py --headless \\
        -u 32 -r 32 -t 30s --host http://127.0.0.1:8080
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import gevent
from locust import FastHttpUser, events, task
from locust.env import Environment
from locust.exception import StopTest

API = "/api/v1"
PAGE_SIZE = 20  # messages a chat UI shows at once, and chats in its sidebar
MAX_SCROLL_PAGES = 3  # older pages read after the newest one, at most
KEPT_ANSWERS = 50  # answers a user may still rate, per user
DEFAULT_THINK_S = 1.0
MAX_RETRY_AFTER_S = 30.0  # a Retry-After longer than this is waited only this long

# request names: ids and free text in URLs are templated, so the stats stay one row per call
SESSIONS = f"{API}/sessions"
SESSION = f"{SESSIONS}/{{session_id}}"
MESSAGES = f"{SESSION}/messages"
BATCH = f"{MESSAGES}/batch"
MESSAGE = f"{MESSAGES}/{{message_id}}"
HISTORY = f"{MESSAGES}?order=desc"
HISTORY_MORE = f"{MESSAGES}?order=desc&cursor={{cursor}}"
LIST_SESSIONS = f"{SESSIONS}?user_id={{user_id}}"
SEARCH = f"{API}/search?q={{q}}&user_id={{user_id}}"
EXPORT = f"{SESSION}/export?format=jsonl"
ATTACHMENTS = f"{SESSION}/attachments"
UPLOAD = "{upload_url}"
COMPLETE = f"{ATTACHMENTS}/{{attachment_id}}/complete"

TOPICS = ("replication", "backups", "invoices", "refunds", "onboarding", "passwords",
          "quotas", "webhooks", "latency", "indexing", "retention", "exports")
ASPECTS = ("configure", "monitor", "troubleshoot", "automate", "audit", "scale")
MODELS = ("rag-small", "rag-large")

Check = Callable[[Any], str | None]  # a problem with a parsed body, or None


@events.init_command_line_parser.add_listener
def _add_options(parser: Any, **_: Any) -> None:
    parser.add_argument("--api-key", env_var="CHAT_LOADTEST_API_KEY", default="",
                        is_secret=True, help="API key of the tenant to load (X-Api-Key)")
    parser.add_argument("--think-s", env_var="CHAT_LOADTEST_THINK_S", type=float,
                        default=DEFAULT_THINK_S,
                        help="mean seconds between a user's actions (0: back to back)")


@events.test_start.add_listener
def _require_key(environment: Environment, **_: Any) -> None:
    """Without a key every request would be a 401: stop before any, exit status 2."""
    if not _option(environment, "api_key", ""):
        logging.getLogger(__name__).error(
            "no API key: set CHAT_LOADTEST_API_KEY or pass --api-key")
        environment.process_exit_code = 2
        if environment.runner is not None:
            environment.runner.quit()


def _option(environment: Environment, name: str, default: Any) -> Any:
    return getattr(environment.parsed_options, name, default)


def _message_check(role: str, seq: int) -> Check:
    def check(m: Any) -> str | None:
        if m.get("role") != role:
            return "stored with another role"
        if m.get("seq") != seq:
            return "seq is not the next after the last acknowledged"
        return None
    return check


def _page_check(below: int | None, newest: int | None) -> Check:
    """A history page in descending seq order: every seq under ``below`` (the oldest of
    the page before) when given, the first one ``newest`` when given (0: empty)."""
    def check(page: Any) -> str | None:
        seqs = [m["seq"] for m in page["data"]]
        if seqs != sorted(set(seqs), reverse=True):
            return "seqs not in descending order"
        if below is not None and seqs and seqs[0] >= below:
            return "a seq of the page before again"
        if newest is not None and (seqs[0] if seqs else 0) != newest:
            return "the newest seq is not the last acknowledged"
        if page["has_more"] and not page["next_cursor"]:
            return "has_more without next_cursor"
        return None
    return check


def _error_of(response: Any) -> str:
    """What went wrong, in words that do not change from one request to the next."""
    if response.status_code == 0:
        error = getattr(response, "error", None)
        return f"{type(error).__name__}: {error}"
    try:
        return str(response.json()["message"])
    except (ValueError, TypeError, KeyError):
        return (response.text or "")[:200]


def _retry_after_s(response: Any) -> float:
    """The response's ``Retry-After`` in seconds (1 if absent or not a number), at most
    :data:`MAX_RETRY_AFTER_S`."""
    try:
        seconds = float(response.headers.get("Retry-After") or 1)
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class ChatUser(FastHttpUser):
    """One person in a chat UI: their chats, their questions, the answers they read."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.user_id = f"loadtest-{uuid.uuid4().hex[:16]}"
        self.headers: dict[str, str] = {}
        self.sessions: dict[str, int] = {}  # session id -> messages acknowledged in it
        self.current: str | None = None  # the chat on screen
        self.answers: deque[tuple[str, str]] = deque(maxlen=KEPT_ANSWERS)  # (session, message)
        self.rng = random.Random()

    def wait_time(self) -> float:
        think_s = float(_option(self.environment, "think_s", DEFAULT_THINK_S))
        return self.rng.uniform(0.5 * think_s, 1.5 * think_s)

    def on_start(self) -> None:
        key = _option(self.environment, "api_key", "")
        if not key:
            raise StopTest("no API key: set CHAT_LOADTEST_API_KEY or pass --api-key")
        self.headers = {"X-Api-Key": key}
        self.new_chat()
        self.send_turn()

    # ------------------------------------------------------------ tasks
    @task(10)
    def send_turn(self) -> None:
        """The user asks; the answer, with its sources and token usage, is stored after it."""
        session_id = self._session()
        if session_id is None:
            return
        question = self._question()
        asked = self._write(session_id, {"role": "user", "content": question,
                                         "sender_id": self.user_id})
        if asked is not None:
            answer = self._answer(question)
            answer["parent_id"] = asked["id"]
            stored = self._write(session_id, answer)
            if stored is not None:
                self.answers.append((session_id, stored["id"]))

    @task(8)
    def read_history(self) -> None:
        """Open the chat: its newest page, then scroll back a few older pages by cursor."""
        session_id = self._session()
        if session_id is None:
            return
        path = f"{SESSIONS}/{session_id}/messages"
        query: dict[str, Any] = {"order": "desc", "limit": PAGE_SIZE}
        page = self._call("GET", f"{path}?{urlencode(query)}", HISTORY, 200,
                          check=_page_check(None, self.sessions[session_id]))
        if page is None:
            self._resync(session_id)
        for _ in range(self.rng.randint(0, MAX_SCROLL_PAGES)):
            if page is None or not page["has_more"]:
                break
            oldest = page["data"][-1]["seq"]
            query["cursor"] = page["next_cursor"]
            page = self._call("GET", f"{path}?{urlencode(query)}", HISTORY_MORE, 200,
                              check=_page_check(oldest, None))

    @task(3)
    def list_sessions(self) -> None:
        """Refresh the sidebar (the user's chats, newest activity first); maybe open another."""
        query = urlencode({"user_id": self.user_id, "limit": PAGE_SIZE})

        def check(page: Any) -> str | None:
            listed = {s["id"] for s in page["data"]}
            if any(s["user_id"] != self.user_id for s in page["data"]):
                return "a chat of another user is listed"
            if len(self.sessions) <= PAGE_SIZE and not set(self.sessions) <= listed:
                return "a chat of the user is missing"
            return None

        page = self._call("GET", f"{SESSIONS}?{query}", LIST_SESSIONS, 200, check=check)
        if page is not None and self.rng.random() < 0.25:
            known = [s["id"] for s in page["data"] if s["id"] in self.sessions]
            if known:
                self.current = self.rng.choice(known)

    @task(2)
    def send_tool_turn(self) -> None:
        """A question, the retriever tool's result and the answer, stored in one batch."""
        session_id = self._session()
        if session_id is None:
            return
        question = self._question()
        answer = self._answer(question)
        retrieved = json.dumps({"retrieved": [c["source_id"] for c in answer["context"]]})
        call_id = f"call-{self.rng.getrandbits(48):012x}"
        batch: list[dict[str, Any]] = [
            {"role": "user", "content": question, "sender_id": self.user_id},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": call_id, "name": "retriever", "arguments": {"query": question}}]},
            {"role": "tool", "content": retrieved, "tool_call_id": call_id},
            answer,
        ]
        first = self.sessions[session_id] + 1

        def check(body: Any) -> str | None:
            got = [(m["role"], m["seq"]) for m in body["data"]]
            want = [(m["role"], first + i) for i, m in enumerate(batch)]
            return None if got == want else "stored in another order or not after the last seq"

        stored = self._call("POST", f"{SESSIONS}/{session_id}/messages/batch", BATCH, 201,
                            body={"messages": batch}, idempotent=True, check=check)
        if stored is not None:
            self.sessions[session_id] += len(batch)
            self.answers.append((session_id, stored["data"][-1]["id"]))
        else:
            self._resync(session_id)

    @task(2)
    def search(self) -> None:
        """Search the user's own history for a word."""
        query = urlencode({"q": self.rng.choice(TOPICS), "user_id": self.user_id, "limit": 10})
        self._call("GET", f"{API}/search?{query}", SEARCH, 200,
                   check=lambda page: None if isinstance(page["data"], list) else "no data")

    @task(1)
    def new_chat(self) -> None:
        """Start a new chat (one in ten is temporary: erased after an hour)."""
        body: dict[str, Any] = {"user_id": self.user_id, "title": "New chat",
                                "metadata": {"client": "loadtest", "ui": "web"}}
        if self.rng.random() < 0.1:
            body["ttl_s"] = 3600
        created = self._call("POST", SESSIONS, SESSIONS, 201, body=body, idempotent=True,
                             check=lambda s: None if s["user_id"] == self.user_id
                             else "created for another user")
        if created is not None:
            self.sessions[created["id"]] = 0
            self.current = created["id"]

    @task(1)
    def rename_or_star(self) -> None:
        """Rename the chat after its subject, or star / unstar it."""
        session_id = self._session()
        if session_id is None:
            return
        change: dict[str, Any] = (
            {"title": f"About {self.rng.choice(TOPICS)}"} if self.rng.random() < 0.5
            else {"favorite": self.rng.random() < 0.5})
        self._call("PATCH", f"{SESSIONS}/{session_id}", SESSION, 200, body=change,
                   check=lambda s: None if all(s[k] == v for k, v in change.items())
                   else "not changed")

    @task(1)
    def give_feedback(self) -> None:
        """Thumbs up (mostly) or down on one of the answers the user saw."""
        if not self.answers:
            return
        session_id, message_id = self.rng.choice(self.answers)
        feedback: dict[str, Any] = {"rating": 1 if self.rng.random() < 0.8 else -1}
        if feedback["rating"] < 0:
            feedback["comment"] = "The sources do not say that."
        self._call("PATCH", f"{SESSIONS}/{session_id}/messages/{message_id}", MESSAGE, 200,
                   body={"feedback": feedback},
                   check=lambda m: None if m["feedback"] == feedback else "feedback not stored")

    @task(1)
    def export(self) -> None:
        """Download the chat as JSON Lines: the session, then every message in seq order."""
        session_id = self._session()
        if session_id is None:
            return
        acked = self.sessions[session_id]

        def check(text: Any) -> str | None:
            lines = [json.loads(line) for line in text.splitlines() if line]
            if not lines or lines[0].get("type") != "session":
                return "the first line is not the session"
            seqs = [line["seq"] for line in lines[1:] if line.get("type") == "message"]
            if seqs != list(range(1, acked + 1)):
                return "the messages exported are not the ones acknowledged"
            return None

        if self._call("GET", f"{SESSIONS}/{session_id}/export?format=jsonl", EXPORT, 200,
                      check=check, text=True) is None:
            self._resync(session_id)

    @task(1)
    def attach_file(self) -> None:
        """Attach a document to a question: announce it, upload it where the service
        says (the object store: no API key goes there), complete, then ask about it."""
        session_id = self._session()
        if session_id is None:
            return
        topic = self.rng.choice(TOPICS)
        data = (f"Notes on {topic}: what we decided and why.\n" * self.rng.randint(20, 400)
                ).encode()
        announced = self._call(
            "POST", f"{SESSIONS}/{session_id}/attachments", ATTACHMENTS, 201, idempotent=True,
            body={"name": f"{topic}-notes.txt", "mime": "text/plain", "size": len(data),
                  "sha256": hashlib.sha256(data).hexdigest()},
            check=lambda b: None if b["attachment"]["status"] == "pending" else "not pending")
        if announced is None:
            return
        upload, aid = announced["upload"], announced["attachment"]["id"]
        if self._call(upload["method"], upload["url"], UPLOAD, 200, data=data,
                      headers=upload["headers"], text=True) is None:
            return
        if self._call("POST", f"{SESSIONS}/{session_id}/attachments/{aid}/complete", COMPLETE,
                      200, check=lambda a: None if a["status"] == "ready" else "not ready",
                      ) is None:
            return
        self._write(session_id, {"role": "user", "content": f"What do my {topic} notes say?",
                                 "sender_id": self.user_id, "attachment_ids": [aid]})

    # ------------------------------------------------------------ helpers
    def _call(self, method: str, path: str, name: str, expect: int, *, body: Any = None,
              idempotent: bool = False, check: Check | None = None, text: bool = False,
              data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        """One request, named ``name`` in the stats; a failure unless the status is
        ``expect`` and the body (JSON, or the text with ``text``) passes ``check``.
        ``data`` and ``headers`` (instead of the API key) are for a presigned URL.

        Returns the parsed body, or None when the request failed.
        """
        headers = dict(self.headers if headers is None else headers)
        if idempotent:  # as a careful client does, to retry safely
            headers["Idempotency-Key"] = str(uuid.uuid4())
        with self.client.request(method, path, name=name, json=body, data=data,
                                 headers=headers, catch_response=True) as response:
            if response.status_code != expect:
                # the error body's message, without its request id and time: one row per cause
                response.failure(f"status {response.status_code}, expected {expect}: "
                                 f"{_error_of(response)}")
                if response.status_code in (401, 403):
                    raise StopTest(f"the API key was refused ({response.status_code})")
                if response.status_code in (429, 503):
                    # as a careful client does: nothing was stored; wait as told, not hot
                    gevent.sleep(_retry_after_s(response))
                return None
            try:
                parsed = response.text if text else response.json()
                problem = check(parsed) if check is not None else None
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                problem = f"unexpected body: {type(exc).__name__}"
            if problem is not None:
                response.failure(problem)
                return None
            response.success()
            return parsed

    def _write(self, session_id: str, message: dict[str, Any]) -> Any:
        """POST one message; its seq must be the next after the last acknowledged."""
        seq = self.sessions[session_id] + 1
        stored = self._call("POST", f"{SESSIONS}/{session_id}/messages", MESSAGES, 201,
                            body=message, idempotent=True,
                            check=_message_check(message["role"], seq))
        if stored is None:
            self._resync(session_id)
        else:
            self.sessions[session_id] = seq
        return stored

    def _resync(self, session_id: str) -> None:
        """After a failure, take the session's message count from the server again."""
        session = self._call("GET", f"{SESSIONS}/{session_id}", SESSION, 200,
                             check=lambda s: None if s["id"] == session_id else "another session")
        if session is not None:
            self.sessions[session_id] = int(session["last_seq"])

    def _session(self) -> str | None:
        """The chat on screen; a new one if the user has none yet."""
        if self.current is None:
            self.new_chat()
        return self.current

    def _question(self) -> str:
        return (f"How do I {self.rng.choice(ASPECTS)} {self.rng.choice(TOPICS)} "
                f"for team {self.rng.randint(1, 40)}?")

    def _answer(self, question: str) -> dict[str, Any]:
        """An assistant answer built from 2 to 5 retrieved passages, with token usage."""
        topic = self.rng.choice(TOPICS)
        context: list[dict[str, Any]] = []
        for rank in range(self.rng.randint(2, 5)):
            doc = self.rng.randint(1, 500)
            sentence = (f"To {self.rng.choice(ASPECTS)} {topic}, open the settings page and "
                        "follow the steps for your plan. ")
            context.append({
                "source_id": f"kb-{doc}", "title": f"{topic.title()} guide, part {doc % 7 + 1}",
                "uri": f"https://kb.example.com/{topic}/{doc}", "snippet": sentence * 3,
                "score": round(0.9 - rank * 0.1 - self.rng.random() * 0.05, 3),
            })
        content = " ".join(
            f"{question.rstrip('?')}: step {i + 1}, see [{i + 1}] ({c['title']})."
            for i, c in enumerate(context)) + f" More about {topic} in the sources below."
        prompt_tokens = 200 + sum(len(c["snippet"]) for c in context) // 4
        completion_tokens = len(content) // 4
        return {"role": "assistant", "content": content, "context": context,
                "metadata": {"latency_ms": self.rng.randint(300, 4000)},
                "usage": {"model": self.rng.choice(MODELS), "prompt_tokens": prompt_tokens,
                          "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}
