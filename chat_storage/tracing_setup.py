"""The SDK parts :func:`chat_storage.tracing.configure` builds: imported only when on.

:class:`InTracesOnly` wraps the sampler the ``OTEL_TRACES_SAMPLER`` variables chose:
- a span with a parent follows that sampler (``parentbased_*``: the parent's choice);
- a root span that links to a sampled span is sampled (a group commit is recorded
  whenever one of the requests it commits is, whatever the ratio);
- a root CLIENT span (a database query, a Redis command outside any request: the
  broker's ``XREAD BLOCK`` loop, the pool's keep-alives) is dropped, so a backend
  holds traces of work rather than one trace per poll.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes


class InTracesOnly(Sampler):
    """The configured sampler, plus: linked to a sampled span → sampled; lone client → dropped."""

    def __init__(self, configured: Sampler) -> None:
        self._configured = configured

    def should_sample(
        self, parent_context: Context | None, trace_id: int, name: str,
        kind: SpanKind | None = None, attributes: Attributes = None,
        links: Sequence[Link] | None = None, trace_state: TraceState | None = None,
    ) -> SamplingResult:
        """See the module doc."""
        if not get_current_span(parent_context).get_span_context().is_valid:
            if any(link.context.trace_flags.sampled for link in links or ()):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
            if kind is SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
        return self._configured.should_sample(parent_context, trace_id, name, kind,
                                              attributes, links, trace_state)

    def get_description(self) -> str:
        """For the SDK's diagnostics."""
        return f"InTracesOnly{{{self._configured.get_description()}}}"


def exporter() -> SpanExporter:
    """OTLP over HTTP (protobuf); endpoint, headers, timeout from ``OTEL_EXPORTER_OTLP_*``."""
    return OTLPSpanExporter()
