"""OpenTelemetry tracing of a real ``chat-storage serve``, received by a real OTLP receiver.

The server is configured by OTEL_* variables only; tests/support/otlp.py decodes what
its exporter posts. Each test awaits the spans it needs (bounded), then checks
parents, links and attributes, and that the request's log lines carry the trace id.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from chat_storage import tracing
from tests.conftest import REDIS_URL, Tenant
from tests.support.otlp import Receiver, Span, receiving
from tests.support.procs import ROOT, Server
from tests.support.streamkit import recv_until, start

pytestmark = pytest.mark.timeout(180)

SECRET_CONTENT = "content-that-must-not-be-in-a-span-" + secrets.token_hex(4)


def traceparent() -> tuple[str, str, str]:
    """(header, trace id, parent span id) of a sampled remote parent."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent}-01", trace_id, parent


def otel_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "chat-storage-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: export soon, the test awaits it
            "CHAT_LOG_LEVEL": "INFO", **extra}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as r:
        yield r


async def serving(database_url: str, tmp_path: Path, env: dict[str, str]) -> Server:
    server = Server(database_url, tmp_path / f"server-{secrets.token_hex(3)}.log",
                    app_name="chat-tracing", redis_url=REDIS_URL,
                    env={"CHAT_REDIS_PREFIX": f"chat-tr-{secrets.token_hex(4)}", **env})
    await server.start()
    return server


def threads(pid: int) -> list[str]:
    return [p.read_text().strip() for p in Path(f"/proc/{pid}/task").glob("*/comm")]


def python_threads(pid: int) -> list[str]:
    return [t for t in threads(pid) if t != "libuv-worker"]


def log_lines(server: Server) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in server.log().splitlines() if x.startswith("{")]


def server_span(spans: list[Span], trace_id: str, route_end: str) -> Span | None:
    return next((s for s in spans if s.kind == "SERVER" and s.trace_id == trace_id
                 and str(s.attributes.get("http.route", "")).endswith(route_end)), None)


def commit_linked_to(spans: list[Span], span: Span) -> Span | None:
    return next((s for s in spans if s.name == "group commit"
                 and (span.trace_id, span.span_id) in s.links), None)


def assert_no_secrets(spans: list[Span], *secret: str) -> None:
    text = repr([(s.name, s.attributes, s.events) for s in spans])
    for value in secret:
        assert value not in text


async def test_http_write_and_websocket_stream_are_traced(
        database_url: str, tmp_path: Path, tenant: Tenant, receiver: Receiver) -> None:
    server = await serving(database_url, tmp_path, otel_env(receiver))
    try:
        # the exporter's thread: the only Python thread besides the main one (Python
        # 3.11 does not name threads in /proc; libuv's pool threads are named)
        assert len(python_threads(server.pid)) == 2
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.base}/api/v1/sessions", headers=tenant.headers,
                                 json={"user_id": "u"}) as r:
                sid = (await r.json())["id"]
            header, trace_id, parent = traceparent()
            async with http.post(
                    f"{server.base}/api/v1/sessions/{sid}/messages",
                    headers={**tenant.headers, "traceparent": header,
                             "X-Request-ID": "rid-traced-write"},
                    json={"role": "user", "content": SECRET_CONTENT}) as r:
                assert r.status == 201, await r.text()
            # a signed-URL route: its path is a credential
            signed = "tok" + secrets.token_hex(12)
            async with http.get(f"{server.base}/objects/{signed}") as r:
                assert r.status >= 400
            ws_header, ws_trace, ws_parent = traceparent()
            ws = await http.ws_connect(f"{server.base}/api/v1/sessions/{sid}/ws",
                                       headers={**tenant.headers, "traceparent": ws_header})
            started = await start(ws, "s1", role="assistant")
            await ws.send_json({"type": "stream.delta", "stream_id": started["stream_id"],
                                "delta": SECRET_CONTENT})
            await ws.send_json({"type": "stream.end", "ref": "e", "stream_id":
                                started["stream_id"]})
            await recv_until(ws, lambda f: f.get("ref") == "e")
            await ws.close()

        # HTTP: the server span continues the caller's trace; the commit links to it
        write = await receiver.wait(
            lambda spans: server_span(spans, trace_id, "/messages"))
        assert write.parent_id == parent and write.name.startswith("POST /api/v1/sessions/")
        assert write.attributes["request_id"] == "rid-traced-write"
        assert write.attributes["http.response.status_code"] == 201
        assert write.service == "chat-storage-test"
        commit = await receiver.wait(lambda spans: commit_linked_to(spans, write))
        assert commit.trace_id != trace_id and commit.parent_id == ""  # linked, not a child
        assert commit.attributes["chat.commit.messages"] >= 1
        insert = await receiver.wait(lambda spans: next(
            (s for s in spans if s.parent_id == commit.span_id and s.kind == "CLIENT"), None))
        assert insert.attributes.get("db.system") == "postgresql"

        # WebSocket: the upgrade's span (the connection's life) continues the caller's
        # trace; the stream's life is its child; the stream's row commit links to it
        conn = await receiver.wait(lambda spans: server_span(spans, ws_trace, "/ws"))
        assert conn.parent_id == ws_parent
        stream = await receiver.wait(lambda spans: next(
            (s for s in spans if s.name == "stream" and s.parent_id == conn.span_id), None))
        assert stream.trace_id == ws_trace
        assert stream.attributes["chat.stream.status"] == "complete"
        assert stream.attributes["chat.stream_id"] == started["stream_id"]
        assert await receiver.wait(lambda spans: commit_linked_to(spans, conn))
        assert await receiver.wait(lambda spans: receiver.named("relay publish"))

        signed_span = await receiver.wait(lambda spans: next(
            (s for s in spans if s.kind == "SERVER"
             and "/objects/" in str(s.attributes.get("http.route", ""))), None))
        assert signed_span.attributes["url.path"] == "/objects/{token}"
        assert_no_secrets(receiver.spans, SECRET_CONTENT, tenant.key, signed)

        # the request's log lines carry its trace and span ids next to its request id
        lines = log_lines(server)
        access = [x for x in lines if x.get("request_id") == "rid-traced-write"]
        assert access and all(x.get("trace_id") == trace_id for x in access)
        assert any(x.get("span_id") == write.span_id for x in access)
        ws_lines = [x for x in lines if x.get("route", "").endswith("/ws")]
        assert ws_lines and all(x.get("trace_id") == ws_trace for x in ws_lines)
    finally:
        await server.stop()


async def test_async_ingest_carries_the_trace_to_the_commit(
        database_url: str, tmp_path: Path, tenant: Tenant, receiver: Receiver) -> None:
    server = await serving(database_url, tmp_path,
                           otel_env(receiver, CHAT_INGEST_MODE="async"))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.base}/api/v1/sessions", headers=tenant.headers,
                                 json={"user_id": "u"}) as r:
                sid = (await r.json())["id"]
            header, trace_id, parent = traceparent()
            async with http.post(f"{server.base}/api/v1/sessions/{sid}/messages",
                                 headers={**tenant.headers, "traceparent": header},
                                 json={"role": "user", "content": SECRET_CONTENT}) as r:
                assert r.status == 202, await r.text()
        accept = await receiver.wait(lambda spans: server_span(spans, trace_id, "/messages"))
        assert accept.parent_id == parent
        # the consumer's span is a child of the accepting request, across Redis
        consume = await receiver.wait(lambda spans: next(
            (s for s in spans if s.name == "ingest consume" and s.trace_id == trace_id), None))
        assert consume.parent_id == accept.span_id and consume.kind == "CONSUMER"
        commit = await receiver.wait(lambda spans: commit_linked_to(spans, consume))
        assert commit.attributes["chat.commit.messages"] >= 1
        assert_no_secrets(receiver.spans, SECRET_CONTENT, tenant.key)
    finally:
        await server.stop()


async def test_without_otel_variables_no_exporter_runs(
        database_url: str, tmp_path: Path) -> None:
    server = await serving(database_url, tmp_path, {})
    try:
        assert len(python_threads(server.pid)) == 1, threads(server.pid)
    finally:
        await server.stop()


def test_building_the_app_sets_up_no_tracing() -> None:
    """Without OTEL_* no SDK tracer provider, exporter or instrumentation is loaded.

    (redis-py imports the OpenTelemetry API and metrics SDK by itself when they are
    installed, for its own opt-in metrics: that is not ours to avoid.)
    """
    code = """if True:
        import sys
        from opentelemetry import trace
        from chat_storage import tracing
        from chat_storage.server import app, serving
        from chat_storage.runtime.settings import Settings
        settings = Settings.from_env()
        app.create_app(settings)
        ours = ("opentelemetry.sdk.trace", "opentelemetry.exporter",
                "opentelemetry.instrumentation")
        print(settings.tracing, tracing.ON, type(trace.get_tracer_provider()).__name__,
              sorted(m for m in sys.modules if m.startswith(ours)))
    """
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.split() == ["False", "False", "ProxyTracerProvider", "[]"]


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
])
def test_which_variables_turn_tracing_on(env: dict[str, str], on: bool) -> None:
    assert tracing.wanted(env) is on
