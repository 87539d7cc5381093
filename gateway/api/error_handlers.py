"""FastAPI's exception handlers: our errors, validation errors, HTTP errors and anything unexpected leave
as OpenAI error bodies, rendered by :func:`gateway.errors.render_error`."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import SERVER_ERROR, InvalidRequest, NotFound, OpenAIError, render_error, validation_error
from gateway.metrics import endpoint_label
from gateway.telemetry.request_scope import REQUEST_ID_HEADER, current_scope

__all__ = ["error_response", "install_error_handlers"]

log = logging.getLogger(__name__)


def error_response(error: OpenAIError, endpoint: str) -> Response:
    """Render and count an error as a JSON response."""
    return Response(render_error(error, endpoint), status_code=error.status_code, media_type="application/json")


def _endpoint(request: Request) -> str:
    return endpoint_label(request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    """Map our errors, validation errors, HTTP errors and anything unexpected to OpenAI bodies."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> Response:
        return error_response(exc, _endpoint(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(validation_error(exc.errors()), _endpoint(request))

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
