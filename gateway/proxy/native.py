"""The proxy fast path without ASGI: uvicorn's HTTP/1.1 protocol, with generation requests served in place.

Through ASGI, a relayed request spent about a third of the gateway's CPU in the HTTP server's request
cycle and the ASGI layers (message dicts, middleware calls, header checks, a second task watching for
disconnects), three times the proxy's own work (docs/BENCHMARKS.md).

:class:`FastPathProtocol` is the gateway's edge protocol (uvicorn's ``httptools`` one held to the limits
of :mod:`gateway.edge.protocol`): it parses, keeps connections alive, times out idle and slow ones, controls
flow and shuts down as uvicorn does, and serves every request through the ASGI
app as before, except ``POST /v1/chat/completions`` and ``POST /v1/completions`` for a backend that
relays unchanged. Those it hands to a :class:`NativeExchange`, which runs the same guards (API keys,
rate limits, body size) and the same :class:`~gateway.proxy.proxied_request.ProxiedRequest`, and writes the
response to the socket itself: the head with the first body bytes in one write, chunked framing for
streams.

Requests it does not take stay on the ASGI path, whose :class:`~gateway.proxy.proxied_request.Passthrough`
serves them the same way: HTTP/1.0, ``Expect: 100-continue``, an ``Upgrade`` request, a request
pipelined behind another, a query string or an absolute URL, and cross-origin requests when CORS is on
(its headers come from the ASGI middleware).

The exchange stands where uvicorn keeps its request cycle (``protocol.cycle``), with the attributes the
protocol reads and writes: the body as it arrives, the end of it, the client's disconnect, the end of
the response and keep-alive.
"""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from gateway.backends.openai import OpenAIBackend
from gateway.drain import Drain
from gateway.edge.protocol import EdgeProtocol
from gateway.errors import SERVER_ERROR, OpenAIError, RequestTooLarge
from gateway.proxy.channel import ClientChannel, ClientGone, Headers
from gateway.proxy.proxied_request import ROUTES, ProxiedRequest
from gateway.security.admission import Admission, client_address
from gateway.security.guards import too_large
from gateway.telemetry.content import ContentLogging
from gateway.telemetry.observe import begin, finish
from gateway.telemetry.request_scope import REQUEST_ID_HEADER, RequestScope

__all__ = ["FastPath", "FastPathProtocol", "NativeExchange", "protocol_class"]

log = logging.getLogger(__name__)

_CLOSE = (b"connection", b"close")
_LAST_CHUNK = b"0\r\n\r\n"


@dataclass(frozen=True)
class FastPath:
    """What the native fast path needs from the app: the backend, the guards, the body limit, CORS, the drain
    that may end its requests at shutdown, and content logging."""

    backend: OpenAIBackend
    admission: Admission
    max_bytes: int
    cors: bool
    drain: Drain
    content: ContentLogging | None = None

    def route(self, url: bytes) -> tuple[str, str] | None:
        """The proxied route of a request target (no query string), or None."""
        return ROUTES.get(url.decode("latin-1")) if self.backend.passthrough else None


class _Signal:
    """What uvicorn's protocol calls ``message_event``: it is ``set()`` when body bytes arrive, when the
    body ends and when the connection is lost."""

    def __init__(self, notify: Callable[[], None]) -> None:
        self.set = notify


class NativeExchange(ClientChannel):
    """One generation request, served on its connection without ASGI."""

    def __init__(self, protocol: "FastPathProtocol", route: tuple[str, str], fast_path: FastPath) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.flow = protocol.flow
        self.headers = protocol.headers
        self.route = route
        self.fast_path = fast_path
        # The request-cycle attributes uvicorn's protocol reads and writes.
        self.body = bytearray()
        self.more_body = True
        self.disconnected = False
        self.response_complete = False
        self.keep_alive = protocol.parser.should_keep_alive()
        self.message_event = _Signal(self._notify)
        self._waiter: asyncio.Future | None = None
        self._gone: Callable[[], None] | None = None
        self._head = b""
        self._chunked = False
        self.response_started = False
        self._status = 500
        self.scope: RequestScope | None = None

    def _notify(self) -> None:
        if self.disconnected and self._gone is not None:
            gone, self._gone = self._gone, None
            gone()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self) -> None:
        """Guards, body, then the proxied request; an unexpected failure is logged, answered 500 or cut.
        The request's scope (:mod:`gateway.telemetry`) spans it all."""
        self.scope = begin("POST", "/v1" + self.route[1], self.headers, self.fast_path.content)
        try:
            await self._serve()
        except ClientGone:
            pass
        except Exception:
            log.exception("unexpected error serving %s", self.route[1])
            if self.response_started:
                self.transport.close()
            else:
                self.keep_alive = False
                await self.respond_error(OpenAIError(SERVER_ERROR), self.route[0])
        finally:
            finish(self.scope, self._status)

    async def _serve(self) -> None:
        endpoint = self.route[0]
        refused = self.fast_path.admission.refusal(self.headers, client_address(self.protocol.client))
        if refused is not None:
            error, extra = refused
            await self.respond_error(error, endpoint, [(k.encode(), v.encode()) for k, v in extra.items()])
            return
        try:
            await self._receive_body()
        except RequestTooLarge as error:
            await self.respond_error(error, endpoint, [_CLOSE])
            return
        await ProxiedRequest(self.fast_path.backend, self.route, self, self.scope, self.fast_path.drain).serve()

    async def _receive_body(self) -> None:
        """Wait for the whole body: ``RequestTooLarge`` past the limit (declared or received)."""
        limit = self.fast_path.max_bytes
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        while self.more_body:
            if self.disconnected:
                raise ClientGone()
            if len(self.body) > limit:
                break
            self.flow.resume_reading()
            self._waiter = self.protocol.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if len(self.body) > limit:
            raise too_large(limit)

    # ---- ClientChannel ---------------------------------------------------------------------------

    async def read_body(self) -> bytes:
        body = bytes(self.body)  # received whole before the request is proxied
        if self.scope.content is not None:
            self.scope.content.request_body(body)
        return body

    async def start(self, status: int, headers: Headers) -> None:
        self.response_started = True
        self._status = status
        head = [STATUS_LINE[status]]
        self._chunked = True
        stamp = (REQUEST_ID_HEADER, self.scope.request_id.encode())
        for name, value in (*self.protocol.server_state.default_headers, *headers, stamp):
            if name == b"content-length":
                self._chunked = False
            elif (name, value) == _CLOSE:
                self.keep_alive = False
                continue
            head += (name, b": ", value, b"\r\n")
        if self._chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self._head = b"".join(head)  # written with the first body bytes: one write, one system call

    async def send(self, data: bytes, more: bool) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected or self.response_complete:
            return
        if self.scope.content is not None:
            self.scope.content.response_body(data)
        if self._chunked:
            data = (b"%x\r\n%b\r\n" % (len(data), data) if data else b"") + (b"" if more else _LAST_CHUNK)
        self.transport.write(self._head + data if self._head else data)
        self._head = b""
        if not more:
            self.response_complete = True
            if not self.keep_alive:
                self.transport.close()
            self.protocol.on_response_complete()

    def watch_disconnect(self, gone: Callable[[], None]) -> Callable[[], None]:
        self._gone = gone
        if self.disconnected:
            self._notify()

        def stop() -> None:
            self._gone = None

        return stop


class FastPathProtocol(EdgeProtocol):
    """The gateway's HTTP/1.1 protocol; generation requests the fast path can take skip ASGI."""

    fast_path: FastPath

    def start_request(self) -> None:
        route = self._native_route()
        if route is None:
            super().start_request()
            return
        exchange = NativeExchange(self, route, self.fast_path)
        self.cycle = exchange  # type: ignore[assignment]  # the protocol uses it as its request cycle
        task = self.loop.create_task(exchange.run())
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _native_route(self) -> tuple[str, str] | None:
        parser = self.parser
        if parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or self.expect_100_continue:
            return None
        if parser.should_upgrade():
            return None  # uvicorn answers protocol upgrades
        if self.limit_concurrency is not None:
            return None  # uvicorn's own limit answers 503 on the ASGI path
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            return None
        if self.fast_path.cors and any(name == b"origin" for name, _ in self.headers):
            return None
        return self.fast_path.route(self.url)


def protocol_class(fast_path: FastPath) -> type[FastPathProtocol]:
    """The protocol class for uvicorn's ``http`` setting, bound to the app's fast path."""
    return type("BoundFastPathProtocol", (FastPathProtocol,), {"fast_path": fast_path})
