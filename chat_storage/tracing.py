"""OpenTelemetry tracing: on when the standard ``OTEL_*`` variables ask for it, else free.

Off (the default: no ``OTEL_EXPORTER_OTLP_*ENDPOINT`` or ``OTEL_TRACES_EXPORTER``),
nothing of OpenTelemetry is imported, no provider or exporter thread exists, and
the hot path pays one check of :data:`ON` (a module attribute) at each place below
that would trace. On, :func:`configure` builds the SDK from the ``OTEL_*`` variables
themselves (service name and resource, sampler, OTLP/HTTP endpoint and headers,
batch sizes: the SDK reads them, so every OpenTelemetry guide applies as written),
installs the asyncpg and Redis instrumentations, and sets :data:`ON`.

Callers guard every call with ``if tracing.ON`` (or ``tracing.ON and ...``): the
functions here assume it is set. What may go into a span attribute: ids, counts,
routes, statuses — never message content, keys, tokens or signed URLs.

Below every layer (like :mod:`chat_storage.supervisor`): the write path, live
streaming, the root and the edge all trace through this one module.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Link, SpanKind, Tracer
    from opentelemetry.trace import Span as Span  # re-exported: callers annotate with it
    from opentelemetry.trace import SpanContext as SpanContext

log = logging.getLogger(__name__)

ON = False  # read on the hot path: set once, by configure(), before serving
_tracer: Tracer | None = None
_provider: TracerProvider | None = None

# What turns tracing on: somewhere to send spans. OTEL_SERVICE_NAME or a sampler alone
# do not (they configure tracing, they do not ask for it).
_ASKING = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables in ``env`` ask for traces to be exported."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(env.get(name, "").strip() for name in _ASKING)


def configure(service_version: str) -> None:
    """Build the SDK from the ``OTEL_*`` variables, instrument asyncpg and Redis, set ON.

    Call once per process (each ``--workers`` worker calls it itself: the exporter's
    thread does not survive a fork), before the app is built. Needs the ``[tracing]``
    extra; without it, tracing stays off with an error logged.
    """
    global ON, _tracer, _provider
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.sdk.resources import SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from chat_storage import tracing_setup
    except ImportError as exc:
        log.error("tracing asked for by OTEL_* but not installed: pip install "
                  "'chat-storage[tracing]'", extra={"error": str(exc)})
        return
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    resource = Resource.create({SERVICE_VERSION: service_version})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "chat-storage"}))
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER(_ARG)
    provider.sampler = tracing_setup.InTracesOnly(provider.sampler)
    # The BatchSpanProcessor runs its own exporter thread (not an asyncio task, so not
    # the supervisor's): spans are handed to it without waiting, it posts them in batches.
    provider.add_span_processor(BatchSpanProcessor(tracing_setup.exporter()))
    trace.set_tracer_provider(provider)
    # capture_parameters stays off: parameters are message content
    AsyncPGInstrumentor().instrument(  # type: ignore[no-untyped-call]  # untyped __init__
        tracer_provider=provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    _provider = provider
    _tracer = provider.get_tracer("chat_storage", service_version)
    ON = True
    log.info("tracing on", extra={"service_name": resource.attributes.get("service.name")})


def shutdown(timeout_s: float = 5.0) -> None:
    """Export what is buffered (for at most ``timeout_s``) and stop the exporter thread."""
    global ON
    if _provider is not None:
        ON = False
        _provider.force_flush(int(timeout_s * 1000))
        _provider.shutdown()


def tracer() -> Tracer:
    """The service's tracer (only with :data:`ON`)."""
    if _tracer is None:
        raise RuntimeError("tracing is off")
    return _tracer


def kind(name: str) -> SpanKind:
    """``SpanKind[name]`` (``SERVER``, ``CONSUMER``, ``PRODUCER``, ``INTERNAL``)."""
    from opentelemetry.trace import SpanKind

    return SpanKind[name]


def here() -> SpanContext | None:
    """The current span's context if it is sampled: what a later span links to."""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return ctx if ctx.trace_flags.sampled else None


def links(contexts: Sequence[object]) -> list[Link]:
    """Links to ``contexts`` (span contexts from :func:`here`), once each."""
    from opentelemetry.trace import Link, SpanContext

    seen: dict[tuple[int, int], SpanContext] = {}
    for ctx in contexts:
        if isinstance(ctx, SpanContext):
            seen.setdefault((ctx.trace_id, ctx.span_id), ctx)
    return [Link(ctx) for ctx in seen.values()]


def extract(carrier: Mapping[str, str]) -> Context:
    """The context a W3C ``traceparent`` (and ``tracestate``) in ``carrier`` names."""
    from opentelemetry import propagate

    return propagate.extract(carrier)


def inject() -> dict[str, str]:
    """The current context as W3C headers (``traceparent``, ...); empty if none."""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def start(name: str, *, parent: Context | None = None, span_kind: str = "INTERNAL",
          attributes: Mapping[str, Any] | None = None,
          linked: Sequence[object] = ()) -> Span:
    """Start a span (not made current): ended by the caller, e.g. a stream's life."""
    return tracer().start_span(name, context=parent, kind=kind(span_kind),
                               attributes=dict(attributes or {}), links=links(linked))


@contextlib.contextmanager
def span(name: str, *, parent: Context | None = None, span_kind: str = "INTERNAL",
         attributes: Mapping[str, Any] | None = None,
         linked: Sequence[object] = ()) -> Iterator[Span]:
    """A span made current for the ``with`` block; an exception sets its status ERROR.

    The exception is not recorded as an event: its message may quote a value (a
    database error quotes the row), and a span never carries content.
    """
    with tracer().start_as_current_span(
            name, context=parent, kind=kind(span_kind), attributes=dict(attributes or {}),
            links=links(linked), record_exception=False,
            set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as exc:
            fail(current, exc)
            raise


def activate(current: Span) -> object:
    """Make ``current`` the current span; returns the token for :func:`deactivate`."""
    from opentelemetry import context, trace

    return context.attach(trace.set_span_in_context(current))


def deactivate(token: object) -> None:
    """Undo :func:`activate`."""
    from opentelemetry import context

    context.detach(token)  # type: ignore[arg-type]  # the Token attach() returned


def fail(current: Span, error: BaseException | str) -> None:
    """Mark ``current`` failed (no message text: an error's type or our own words)."""
    from opentelemetry.trace import Status, StatusCode

    description = error if isinstance(error, str) else type(error).__name__
    current.set_status(Status(StatusCode.ERROR, description))


def log_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, for log lines; ``None``: none."""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
