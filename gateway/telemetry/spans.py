"""The child spans of a request: each call to an upstream (CLIENT) and each gate attempt (INTERNAL).

Both are children of the request's span, found in the current :class:`RequestScope`; with tracing off
(or outside a request) they are None and cost nothing more.
"""

from typing import Any

from gateway.telemetry.request_scope import OPERATIONS, current_scope
from gateway.telemetry.tracing import active, trace_headers

__all__ = ["end_attempt_span", "end_upstream_span", "start_attempt_span", "start_upstream_span"]

# Upstream paths (under the upstream's /v1) -> the endpoint label of the operation.
_UPSTREAM_ENDPOINTS = {"/chat/completions": "chat", "/completions": "completions"}


def start_upstream_span(upstream: str, host: str, port: int, path: str, model: str) -> tuple[Any, dict[str, str]]:
    """The span of one call to an upstream (None when not traced) and the trace headers to send with it."""
    scope = current_scope()
    tracing = active()
    span = None
    if tracing is not None and scope is not None and scope.span is not None:
        operation = OPERATIONS.get(_UPSTREAM_ENDPOINTS.get(path, ""), path)
        attributes = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            "server.address": host,
            "server.port": port,
            "sinkwatch.upstream": upstream,
        }
        span = tracing.start(f"{operation} {model}", "CLIENT", scope.span, attributes)
    return span, trace_headers(scope, span)


def end_upstream_span(span: Any, status: int | None, error: str | None) -> None:
    """End an upstream call's span: the answer's status, and what went wrong if anything did."""
    tracing = active()
    if span is None or tracing is None:
        return
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error is not None:
        span.set_attribute("error.type", error)
        tracing.fail(span, error)
    span.end()


def start_attempt_span(number: int, strategy: str | None, choice: int | None = None) -> Any:
    """The span of a gate attempt (1: the first generation, then each rescue; of one ``choice`` of a relayed
    answer), or None when not traced."""
    scope = current_scope()
    tracing = active()
    if tracing is None or scope is None or scope.span is None:
        return None
    attributes = {"sinkwatch.attempt.number": number, "sinkwatch.attempt.strategy": strategy or "original"}
    if choice is not None:
        attributes["sinkwatch.attempt.choice"] = choice
    return tracing.start("sinkwatch.gate.attempt", "INTERNAL", scope.span, attributes)


def end_attempt_span(span: Any, report: dict[str, Any]) -> None:
    """End a gate attempt's span with what the attempt's report says (verdict, tokens, where it fired)."""
    for name, value in report.items():
        if value is not None and name != "strategy":
            span.set_attribute(f"sinkwatch.attempt.{name}", value)
    span.end()
