"""The client's side of a proxied request, whichever server carries it.

The proxy fast path (``gateway.proxy.proxied_request``) reads the request body and writes the response
through a :class:`ClientChannel`. Two carry it: :class:`AsgiChannel`, for requests that went through
the ASGI stack, and the native exchange of ``gateway.proxy.native``, which writes to the connection
directly.
"""

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable

from starlette.types import Receive, Scope, Send

from gateway.errors import InvalidRequest, OpenAIError, render_error
from gateway.security.admission import header

__all__ = ["JSON_HEADERS", "AsgiChannel", "ClientChannel", "ClientGone", "Headers"]

Headers = list[tuple[bytes, bytes]]
JSON_HEADERS: Headers = [(b"content-type", b"application/json")]


class ClientGone(InvalidRequest):
    """The client went away before its request body was complete."""

    def __init__(self) -> None:
        super().__init__("the client went away before sending the request body")


class ClientChannel(ABC):
    """Request headers in, request body in, response out; and word when the client goes away."""

    headers: Headers  # lower-case names, as received

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case)."""
        return header(self.headers, name)

    @abstractmethod
    async def read_body(self) -> bytes:
        """The whole request body; :class:`ClientGone` when the client went away first."""

    @abstractmethod
    async def start(self, status: int, headers: Headers) -> None:
        """Begin the response. Without a ``content-length`` header, the body comes in parts."""

    @abstractmethod
    async def send(self, data: bytes, more: bool) -> None:
        """Send body bytes; ``more=False`` ends the response."""

    @abstractmethod
    def watch_disconnect(self, gone: Callable[[], None]) -> Callable[[], None]:
        """Call ``gone`` if the client goes away before the response ends; returns what stops watching."""

    async def respond_error(self, error: OpenAIError, endpoint: str, extra: Headers | None = None) -> None:
        """The whole response for ``error`` (counted), with ``extra`` headers."""
        body = render_error(error, endpoint)
        await self.start(error.status_code, [*JSON_HEADERS, (b"content-length", b"%d" % len(body)), *(extra or ())])
        await self.send(body, more=False)


class AsgiChannel(ClientChannel):
    """A request that came through the ASGI stack."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.headers = scope["headers"]
        self._receive = receive
        self._send = send

    async def read_body(self) -> bytes:
        chunks = []
        while True:
            message = await self._receive()
            if message["type"] != "http.request":
                raise ClientGone()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    async def start(self, status: int, headers: Headers) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def send(self, data: bytes, more: bool) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    def watch_disconnect(self, gone: Callable[[], None]) -> Callable[[], None]:
        return asyncio.ensure_future(self._watch(gone)).cancel

    async def _watch(self, gone: Callable[[], None]) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        gone()
