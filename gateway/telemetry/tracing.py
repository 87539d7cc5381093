"""OpenTelemetry traces, configured by the standard ``OTEL_*`` environment variables and off unless set.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or an OTLP
endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and
``OTEL_SDK_DISABLED`` is not ``true``. The SDK reads the rest itself: ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_BSP_*``, ``OTEL_PROPAGATORS`` and
the exporter's endpoint, headers, timeout and compression. OTLP goes over HTTP/protobuf (gRPC when
``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL=grpc`` and its exporter package is installed).

The SDK is imported only when tracing is on: a gateway without it pays one ``is None`` test per
request and loads none of it. Spans follow the GenAI semantic conventions (:func:`request_attributes`,
:mod:`gateway.telemetry.spans`): one SERVER span per ``/v1/`` request, CLIENT spans for each call to an
upstream (whose ``traceparent`` continues the trace there), INTERNAL spans for each gate attempt.
"""

from collections.abc import Mapping
from typing import Any

from gateway import __version__
from gateway.telemetry.request_scope import RequestScope

__all__ = [
    "TRACE_HEADERS",
    "Tracing",
    "active",
    "configure",
    "exporter_names",
    "flush",
    "request_attributes",
    "trace_headers",
    "use",
]

EXPORTERS = ("otlp", "console", "none")
TRACE_HEADERS = (b"traceparent", b"tracestate", b"baggage")  # W3C trace context and baggage

_tracing: "Tracing | None" = None


class Tracing:
    """A tracer and what making spans needs (imported once, when tracing is on)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import propagate, trace

        self.provider = provider
        self.tracer = provider.get_tracer("sinkwatch", __version__)
        self.kinds = trace.SpanKind
        self.status = trace.Status
        self.error = trace.StatusCode.ERROR
        self._propagate = propagate
        self._in_context = trace.set_span_in_context

    def start(self, name: str, kind: str, parent: Any, attributes: dict | None = None) -> Any:
        """A started span, a child of the span ``parent``; not made current: a request hands its spans along
        in its scope, since its work spans tasks."""
        return self.tracer.start_span(name, self._in_context(parent), self.kinds[kind], attributes)

    def start_remote_child(self, name: str, carrier: Mapping[str, str], attributes: dict | None = None) -> Any:
        """A SERVER span, a child of the one named by a client's ``traceparent`` (a new trace without one)."""
        return self.tracer.start_span(name, self._propagate.extract(carrier), self.kinds.SERVER, attributes)

    def inject(self, span: Any) -> dict[str, str]:
        """The headers that make ``span`` the parent of what the receiver does."""
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier, context=self._in_context(span))
        return carrier

    def fail(self, span: Any, description: str) -> None:
        """Mark ``span`` as failed, saying why."""
        span.set_status(self.status(self.error, description))


FLUSH_TIMEOUT_MS = 5000


def flush() -> None:
    """Export the spans still queued, waiting at most :data:`FLUSH_TIMEOUT_MS` (when the app stops: a
    process stopped by SIGTERM ends by that signal, without running exit handlers)."""
    if _tracing is not None:
        _tracing.provider.force_flush(FLUSH_TIMEOUT_MS)


def active() -> Tracing | None:
    """The tracing in use, or None when it is off."""
    return _tracing


def use(provider: Any | None) -> None:
    """Trace with ``provider`` (an SDK ``TracerProvider``) from now on; None turns tracing off."""
    global _tracing
    _tracing = Tracing(provider) if provider is not None else None


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for; none when tracing is off. ``ValueError`` for an unknown one."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    listed = environ.get("OTEL_TRACES_EXPORTER")
    if listed is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    names = [name.strip().lower() for name in listed.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {unknown[0]!r} (known: {', '.join(EXPORTERS)})")
    return [name for name in names if name != "none"]


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (protocol or "http/protobuf").strip().lower()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
        except ImportError:
            raise ValueError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the opentelemetry-exporter-otlp-proto-grpc package"
            ) from None
        return GrpcSpanExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (http/protobuf or grpc)")


def configure(environ: Mapping[str, str]) -> bool:
    """Turn tracing on when the environment asks for it (at a serving process's start); whether it did."""
    names = exporter_names(environ)
    if not names:
        return False
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()  # the resource, sampler and limits from the environment; flushed at exit
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
    use(provider)
    return True


def trace_headers(scope: RequestScope | None, span: Any) -> dict[str, str]:
    """What an upstream request carries of the trace: ``span``'s context when tracing is on, else the
    client's own W3C headers as received (so a traced client's trace goes on)."""
    if span is not None and _tracing is not None:
        return _tracing.inject(span)
    return scope.trace_headers if scope is not None else {}


def request_attributes(scope: RequestScope) -> dict[str, Any]:
    """A finished request's span attributes: GenAI conventions, HTTP, and what sinkwatch saw and did."""
    values = {
        "http.request.method": scope.method,
        "http.route": scope.route,
        "http.response.status_code": scope.status,
        "gen_ai.operation.name": scope.operation,
        "gen_ai.request.model": scope.model,
        "gen_ai.usage.input_tokens": scope.input_tokens,
        "gen_ai.usage.output_tokens": scope.output_tokens,
        "gen_ai.response.finish_reasons": list(scope.finish_reasons) or None,
        "sinkwatch.request_id": scope.request_id,
        "sinkwatch.api_key.name": scope.key,
        "sinkwatch.policy": scope.policy,
        "sinkwatch.verdict": scope.verdict,
        "sinkwatch.verdict.reasons": list(scope.reasons) or None,
        "sinkwatch.gate.action": scope.gate_action,
        "sinkwatch.gate.outcome": scope.gate_outcome,
    }
    return {name: value for name, value in values.items() if value is not None}
