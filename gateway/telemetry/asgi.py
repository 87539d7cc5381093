"""The outermost ASGI layer: every HTTP request gets a scope (its id in every log line, in the
``x-request-id`` response header, upstream and in its trace), an access line and a span."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.telemetry.content import ContentLogging
from gateway.telemetry.observe import begin, finish
from gateway.telemetry.request_scope import REQUEST_ID_HEADER

__all__ = ["Observed"]


class Observed:
    """ASGI middleware: opens the request's scope, stamps the response with its id, closes it at the end
    (after a streamed body's last byte)."""

    def __init__(self, app: ASGIApp, content: ContentLogging | None = None) -> None:
        self.app = app
        self.content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = begin(scope["method"], scope["path"], scope["headers"], self.content)
        stamp = (REQUEST_ID_HEADER, request.request_id.encode())
        capture = request.content
        status = 500  # unless a response starts: an exception answered by Starlette's last-resort handler

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), stamp]}
            elif capture is not None and message["type"] == "http.response.body":
                capture.response_body(message.get("body", b""))
            await send(message)

        async def observed_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                capture.request_body(message.get("body", b""))
            return message

        try:
            await self.app(scope, observed_receive if capture is not None else receive, observed_send)
        finally:
            route = scope.get("route")
            if route is not None and hasattr(route, "path"):
                request.route = route.path
            finish(request, status)
