"""Every failure leaves as an OpenAI error body; this is the only place that renders them."""

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import metrics
from gateway.errors import InvalidRequest, NotFound, OpenAIError
from gateway.telemetry.request_scope import REQUEST_ID_HEADER, current_scope

log = logging.getLogger(__name__)

SERVER_ERROR = "The server had an error while processing your request."


def rendered_error(error: OpenAIError, endpoint: str) -> bytes:
    """Count an error (``sinkwatch_errors_total``) and render its OpenAI body."""
    metrics.ERRORS.labels(endpoint, error.error_type).inc()
    return orjson.dumps(error.body())


def error_response(error: OpenAIError, endpoint: str) -> Response:
    """Render and count an error."""
    return Response(rendered_error(error, endpoint), status_code=error.status_code, media_type="application/json")


def endpoint_label(path: str) -> str:
    """A closed label set for the metrics: the route's last path segment, or 'other'."""
    for name in ("chat", "completions", "models"):
        if path.startswith(f"/v1/{name}" if name != "chat" else "/v1/chat/completions"):
            return name
    return "other"


def _endpoint(request: Request) -> str:
    return endpoint_label(request.url.path)


def _param(location: tuple) -> str | None:
    parts = [p for p in location if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    """The first validation problem, as OpenAI words it, with ``param`` set."""
    first = exc.errors()[0]
    kind, location = first.get("type", ""), tuple(first.get("loc", ()))
    param = _param(location)
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


def install_error_handlers(app: FastAPI) -> None:
    """Map our errors, validation errors, HTTP errors and anything unexpected to OpenAI bodies."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> Response:
        return error_response(exc, _endpoint(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(validation_error(exc), _endpoint(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            error: OpenAIError = NotFound(f"Invalid URL ({request.method} {request.url.path})")
        else:
            error = InvalidRequest(str(exc.detail), code="http_error")
            error.status_code = exc.status_code
        return error_response(error, _endpoint(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error serving %s", request.url.path)
        response = error_response(OpenAIError(SERVER_ERROR), _endpoint(request))
        if (scope := current_scope()) is not None:  # answered outside the middleware that stamps the others
            response.headers[REQUEST_ID_HEADER.decode()] = scope.request_id
        return response
