"""A real OTLP/HTTP trace receiver on loopback: what an OpenTelemetry collector would get.

An aiohttp server takes ``POST /v1/traces`` (``application/x-protobuf``), decodes the
``ExportTraceServiceRequest`` with ``opentelemetry-proto`` and keeps every span as a
:class:`Span`; :meth:`Receiver.wait` awaits a condition on them (no sleep-and-hope).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


@dataclasses.dataclass(frozen=True)
class Span:
    """One received span; ids in lowercase hex as in ``traceparent`` and our log lines."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, Any]
    links: list[tuple[str, str]]  # (trace id, span id)
    events: list[tuple[str, dict[str, Any]]]
    status: int  # 0 unset, 1 ok, 2 error
    service: str


class Receiver:
    """Collects the spans exported to it (see the module doc)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self._changed = asyncio.Condition()
        self.endpoint = ""

    async def _export(self, request: web.Request) -> web.Response:
        body = ExportTraceServiceRequest.FromString(await request.read())
        for rs in body.resource_spans:
            res = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(Span(
                        name=s.name, kind=KINDS.get(s.kind, str(s.kind)),
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        attributes={kv.key: _value(kv.value) for kv in s.attributes},
                        links=[(ln.trace_id.hex(), ln.span_id.hex()) for ln in s.links],
                        events=[(e.name, {kv.key: _value(kv.value) for kv in e.attributes})
                                for e in s.events],
                        status=s.status.code, service=str(res.get("service.name", ""))))
        self.requests += 1
        async with self._changed:
            self._changed.notify_all()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def wait(self, pred: Callable[[list[Span]], Any], timeout_s: float = 30.0) -> Any:
        """Until ``pred(spans)`` is truthy (then its value); fails after ``timeout_s``."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: pred(self.spans))
        return pred(self.spans)

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]

    def by_id(self, span_id: str) -> Span | None:
        return next((s for s in self.spans if s.span_id == span_id), None)


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    """A :class:`Receiver` listening on 127.0.0.1 (its ``endpoint`` is the base URL)."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver._export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()
