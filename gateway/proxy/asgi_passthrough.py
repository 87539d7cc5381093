"""The proxy fast path as ASGI middleware: generation requests served by a :class:`ProxiedRequest` before
FastAPI routing (under ``sinkwatch serve`` most never get this far: the native path takes them first)."""

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.backends.openai import OpenAIBackend
from gateway.drain import Drain
from gateway.proxy.channel import AsgiChannel
from gateway.proxy.proxied_request import ROUTES, ProxiedRequest
from gateway.telemetry.request_scope import current_scope

__all__ = ["Passthrough"]


class Passthrough:
    """ASGI middleware: serves generation requests straight from the backend's upstream pool."""

    def __init__(self, app: ASGIApp, backend: OpenAIBackend, drain: Drain) -> None:
        self.app = app
        self.backend = backend
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or not self.backend.passthrough:
            await self.app(scope, receive, send)
            return
        request = current_scope()
        if request is None:
            raise RuntimeError("Passthrough serves inside gateway.telemetry.asgi.Observed, which opens the scope")
        await ProxiedRequest(self.backend, route, AsgiChannel(scope, receive, send), request, self.drain).serve()
