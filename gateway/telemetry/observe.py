"""Open a request's scope when it arrives; when it ends, write its access line (and content line) and end
its span. Called by the outermost layer of each server path: :class:`~gateway.telemetry.asgi.Observed`
and the native proxy exchange."""

import logging
import time

from gateway.telemetry.content import ContentLogging
from gateway.telemetry.request_scope import REQUEST_ID_HEADER, RequestScope, open_scope, request_id_of
from gateway.telemetry.tracing import TRACE_HEADERS, active, request_attributes

__all__ = ["begin", "finish"]

access_log = logging.getLogger("sinkwatch.access")
content_log = logging.getLogger("sinkwatch.content")

API_PREFIX = "/v1/"


def begin(method: str, route: str, headers: list[tuple[bytes, bytes]], content: ContentLogging | None) -> RequestScope:
    """The scope of a request that just arrived: its id, the client's trace context, and for ``/v1/``
    routes its span (when tracing is on) and its content capture (when ``--log-content`` is on)."""
    request_id = None
    trace: dict[str, str] = {}
    for name, value in headers:
        if name == REQUEST_ID_HEADER and request_id is None:
            request_id = value
        elif name in TRACE_HEADERS:
            trace[name.decode()] = value.decode("latin-1")
    scope = open_scope(request_id_of(request_id), method, route)
    scope.trace_headers = trace
    tracing = active()
    if tracing is not None and route.startswith(API_PREFIX):
        attributes = {"http.request.method": method, "sinkwatch.request_id": scope.request_id}
        scope.span = tracing.start_remote_child(f"{method} {route}", trace, attributes)
    if content is not None and route.startswith(API_PREFIX):
        scope.content = content.capture(headers)
    return scope


def finish(scope: RequestScope, status: int) -> None:
    """The request is over: its access line, its content line (``--log-content``), the end of its span."""
    scope.status = status
    ended = time.perf_counter()
    level = logging.INFO if scope.route.startswith(API_PREFIX) else logging.DEBUG  # probes and scrapes: debug
    if access_log.isEnabledFor(level):
        access_log.log(level, "%s %s %d", scope.method, scope.route, status, extra={"fields": _access(scope, ended)})
    if scope.content is not None:
        content_log.info("content of %s %s", scope.method, scope.route, extra={"fields": scope.content.fields()})
    tracing = active()
    if scope.span is not None and tracing is not None:
        span = scope.span
        if scope.operation is not None and scope.model is not None:
            span.update_name(f"{scope.operation} {scope.model}")
        span.set_attributes(request_attributes(scope))
        if status >= 500:
            tracing.fail(span, f"status {status}")
        span.end()


def _access(scope: RequestScope, ended: float) -> dict:
    """The access line's fields: what was asked and how it went, never content or keys."""
    ttft = scope.first_token_at - scope.started_at if scope.first_token_at is not None else None
    return {
        "method": scope.method,
        "route": scope.route,
        "status": scope.status,
        "model": scope.model,
        "key": scope.key,
        "verdict": scope.verdict,
        "gate_action": scope.gate_action,
        "tokens_in": scope.input_tokens,
        "tokens_out": scope.output_tokens,
        "latency_s": round(ended - scope.started_at, 4),
        "ttft_s": round(ttft, 4) if ttft is not None else None,
    }
