"""The request being served: its id, and what the access line and the trace say about it.

The outermost layer of each server path (the ASGI :class:`~gateway.telemetry.asgi.Observed` middleware,
the native proxy exchange) opens a :class:`RequestScope` in a context variable; the layers below fill
it in as they learn things (the API key's name, the model, tokens, the verdict and what the gate did),
and the log filter stamps every line written meanwhile with its id. Each request runs in its own task,
and a streamed body's task is started from it, so they all see the same scope.
"""

import os
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from gateway.telemetry.content import ContentCapture

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID = 128
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
# OpenAI's endpoints (ours: the metrics' endpoint label) -> GenAI semantic conventions' operation names.
OPERATIONS = {"chat": "chat", "completions": "text_completion"}

__all__ = ["OPERATIONS", "REQUEST_ID_HEADER", "RequestScope", "current_scope", "open_scope", "request_id_of"]

_current: ContextVar["RequestScope | None"] = ContextVar("sinkwatch_request", default=None)


def request_id_of(value: bytes | None) -> str:
    """The client's ``x-request-id`` when it is short and plain (it ends up in logs and headers), else a
    new random one."""
    if value is not None:
        text = value.decode("latin-1")
        if 0 < len(text) <= MAX_REQUEST_ID and set(text) <= _PLAIN:
            return text
    return os.urandom(16).hex()


@dataclass
class RequestScope:
    """One request as the access line and the trace describe it (never its content or its key)."""

    request_id: str
    method: str
    route: str
    started_at: float = field(default_factory=time.perf_counter)
    status: int = 0
    key: str | None = None
    operation: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reasons: tuple[str, ...] = ()
    first_token_at: float | None = None
    policy: str | None = None
    verdict: str | None = None
    reasons: tuple[str, ...] = ()
    gate_action: str | None = None
    gate_outcome: str | None = None
    trace_headers: dict[str, str] = field(default_factory=dict)  # the client's traceparent, tracestate, baggage
    span: Any = None  # the request's span when tracing is on
    content: ContentCapture | None = None  # when --log-content is on

    def served(self, endpoint: str, model: str) -> None:
        """The request is a generation of ``model`` at ``endpoint`` (``chat``, ``completions``)."""
        self.operation = OPERATIONS.get(endpoint, endpoint)
        self.model = model

    def first_token(self) -> None:
        """The first text reached the client now (the first call counts)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()


def open_scope(request_id: str, method: str, route: str) -> RequestScope:
    """Start serving a request in the current task (and the tasks it starts)."""
    scope = RequestScope(request_id, method, route)
    _current.set(scope)
    return scope


def current_scope() -> RequestScope | None:
    """The request the current task serves, if any."""
    return _current.get()
