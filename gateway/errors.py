"""One exception hierarchy for everything a client can be told, and the one place that renders it.

Every layer (the FastAPI handlers, the security guards, the proxy fast path, a stream that fails half way)
turns an :class:`OpenAIError` into bytes through :func:`render_error` or :func:`error_event`, which count it
in ``sinkwatch_errors_total`` exactly once.
"""

from collections.abc import Sequence
from typing import Any, ClassVar

import orjson

from gateway import metrics

__all__ = [
    "SERVER_ERROR",
    "AuthenticationFailed",
    "ContentBlocked",
    "ContextLengthExceeded",
    "EngineFailure",
    "HeaderTooLarge",
    "InvalidRequest",
    "ModelNotFound",
    "NotFound",
    "NotReady",
    "OpenAIError",
    "Overloaded",
    "RateLimited",
    "RequestTimeout",
    "RequestTooLarge",
    "ShuttingDown",
    "TooManyConnections",
    "UnsupportedParameter",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamTimeout",
    "error_event",
    "render_error",
    "validation_error",
]

SERVER_ERROR = "The server had an error while processing your request."


class OpenAIError(Exception):
    """Base: an HTTP status, OpenAI's ``type``, and the offending ``param`` and machine ``code``."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def body(self) -> dict:
        """``{"error": {...}}`` as OpenAI sends it."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class InvalidRequest(OpenAIError):
    """Malformed or unacceptable input (400)."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_value"


class UnsupportedParameter(InvalidRequest):
    """A valid OpenAI parameter this server does not implement (400, never silently ignored)."""

    default_code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    """Prompt plus requested tokens do not fit the model's context (400)."""

    default_code = "context_length_exceeded"


class RequestTooLarge(InvalidRequest):
    """The request body is over the configured size limit (413)."""

    status_code = 413
    default_code = "request_too_large"


class RequestTimeout(InvalidRequest):
    """The client took longer than its deadline to send a request's head or body (408)."""

    status_code = 408
    default_code = "request_timeout"


class HeaderTooLarge(InvalidRequest):
    """The request line and headers are over the configured size limit (431)."""

    status_code = 431
    default_code = "request_header_too_large"


class TooManyConnections(OpenAIError):
    """The server holds as many client connections as it may (503)."""

    status_code = 503
    default_code = "too_many_connections"


class AuthenticationFailed(OpenAIError):
    """Missing or wrong API key (401)."""

    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class NotFound(OpenAIError):
    """Unknown model or route (404)."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    """The requested model is not served here (404)."""

    default_code = "model_not_found"


class RateLimited(OpenAIError):
    """Too many requests for this key, or a full queue (429)."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class Overloaded(RateLimited):
    """The engine's bounded queue is full (429); retry later."""

    default_code = "queue_full"


class UpstreamError(OpenAIError):
    """The upstream model server failed or answered something unusable (502)."""

    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time (504)."""

    status_code = 504
    default_code = "upstream_timeout"


class UpstreamRejected(OpenAIError):
    """The upstream refused the request as a client error (4xx): its status and error pass through.

    The upstream's own ``type`` goes to the client; metrics count these under this class's ``error_type``
    so that an upstream cannot grow the label set.
    """

    error_type = "invalid_request_error"

    def __init__(self, status_code: int, error: dict) -> None:
        param, code = error.get("param"), error.get("code")
        super().__init__(
            str(error.get("message") or f"the upstream refused the request ({status_code})"),
            param=param if isinstance(param, str) else None,
            code=code if isinstance(code, str) else None,
        )
        self.status_code = status_code
        self.upstream_type = str(error.get("type") or self.error_type)

    def body(self) -> dict:
        """The upstream's error, with its own ``type``."""
        body = super().body()
        body["error"]["type"] = self.upstream_type
        return body


class EngineFailure(OpenAIError):
    """The embedded engine failed while generating (500)."""

    default_code = "engine_failure"


class NotReady(OpenAIError):
    """The model is still loading (503); retry shortly."""

    status_code = 503
    default_code = "model_loading"


class ContentBlocked(OpenAIError):
    """The gate blocked a collapsing generation and the operator asked for an error instead (422)."""

    status_code = 422
    error_type = "content_filter"
    default_code = "sinkwatch_blocked"


class ShuttingDown(OpenAIError):
    """The gateway is shutting down and the request could not finish within its shutdown timeout (503)."""

    status_code = 503
    default_code = "shutting_down"


def render_error(error: OpenAIError, endpoint: str) -> bytes:
    """Count an error (``sinkwatch_errors_total``) and render its OpenAI body."""
    metrics.ERRORS.labels(endpoint, error.error_type).inc()
    return orjson.dumps(error.body())


def error_event(error: OpenAIError, endpoint: str) -> bytes:
    """A mid-stream error as a server-sent event (the official clients raise it as an APIError), counted."""
    return b"data: " + render_error(error, endpoint) + b"\n\n"


def _param(location: Sequence[Any]) -> str | None:
    text = ""
    for part in (p for p in location if p != "body"):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def validation_error(problems: Sequence[dict]) -> InvalidRequest:
    """The first of pydantic's validation ``problems`` (``exc.errors()``), as OpenAI words it, with ``param``."""
    first = problems[0]
    kind, param = first.get("type", ""), _param(tuple(first.get("loc", ())))
    if kind == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON.", code="invalid_json"
        )
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    if kind == "missing" and not param:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    message = first.get("msg", "invalid value")
    return InvalidRequest(f"Invalid value for '{param}': {message}." if param else f"{message}.", param=param)
