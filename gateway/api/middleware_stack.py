"""The ASGI layers in front of the routes, outermost first: the request's scope (its id, access line and
trace), CORS (when enabled), API keys and rate limits (always in place: a reload may turn them on), the
request size limit, the proxy fast path (for
backends that can relay unchanged; it checks its own JSON), and strict JSON for the full serving path."""

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from gateway.backends.openai import OpenAIBackend
from gateway.config import Settings
from gateway.drain import Drain
from gateway.generation import Backend
from gateway.proxy.asgi_passthrough import Passthrough
from gateway.proxy.native import FastPath
from gateway.security.admission import Admission
from gateway.security.guards import BodyLimit, Guard, StrictJson
from gateway.telemetry.asgi import Observed
from gateway.telemetry.content import ContentLogging

__all__ = ["install_middleware"]


def install_middleware(
    app: FastAPI, settings: Settings, backend: Backend, drain: Drain, admission: Admission
) -> FastPath | None:
    """Add the layers (Starlette runs the last one added first); returns the native fast path's view of
    them when the backend relays unchanged (``gateway.proxy.native``)."""
    app.add_middleware(StrictJson)
    relays = isinstance(backend, OpenAIBackend) and backend.passthrough
    if relays:
        app.add_middleware(Passthrough, backend=backend, drain=drain)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(Guard, admission=admission)
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id", "x-sinkwatch-policy"],
            expose_headers=["x-request-id", "x-sinkwatch-verdict"],
        )
    content = ContentLogging(settings.log_content_limit) if settings.log_content else None
    app.add_middleware(Observed, content=content)
    if not relays:
        return None
    return FastPath(backend, admission, settings.max_request_bytes, bool(origins), drain, content)
