"""uvicorn's httptools protocol with the limits a hostile client meets, for every request the gateway serves.

Both ways a request is served go through :class:`EdgeProtocol`: the ASGI app, and the proxy's native fast
path (``gateway.proxy.native``, whose protocol subclasses this one). Per connection it enforces:

- a request head (request line and headers) of at most ``max_header_bytes``: counted while it arrives, so
  a header that never ends is refused (431) after that many bytes instead of being buffered;
- deadlines: the head must arrive within ``header_timeout`` of the connection opening (or of its first
  byte, on a kept-alive connection), the body within ``body_timeout`` of the head: 408, and the
  connection closed (slowloris). An idle kept-alive connection closes after ``keepalive_timeout``;
- at most ``max_connections`` connections per process: a connection beyond is answered 503 and closed at
  once (the limit stays under the file-descriptor limit, see :mod:`gateway.edge.limits`);
- protocol upgrades refused safely: llhttp takes what follows an upgrade request's head for the new
  protocol, not for its body, so a request with ``Upgrade`` and a body is answered 400, and one without is
  served as plain HTTP on a connection that closes after the response; nothing after it is parsed (no
  second request smuggled in a body);
- a request's head and cycle let go once its response is complete: an idle connection holds no request;
- a client that does not read holds a bounded amount: the kernel's send buffer is :data:`SEND_BUFFER`,
  then uvicorn's flow control pauses the response, and the upstream's connection stops being read.

Refusals are OpenAI error bodies with ``connection: close`` (counted in ``sinkwatch_errors_total`` and
``sinkwatch_http_refused_total``); the connection then reads and drops what the client still sends for
:data:`LINGER` seconds before closing, so that the client reads the answer instead of a reset.
"""

import asyncio
import socket
from collections.abc import Callable
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway import metrics
from gateway.edge.limits import EdgeLimits
from gateway.errors import HeaderTooLarge, InvalidRequest, OpenAIError, RequestTimeout, TooManyConnections, render_error

__all__ = ["EdgeProtocol"]

SEND_BUFFER = 1 << 17
"""Bytes the kernel holds for a client that does not read: past them (and uvicorn's 64 KiB), the response
waits, and so does the upstream behind it (autotuning would let it grow to megabytes per connection)."""

LINGER = 2.0
"""Seconds a refused connection keeps reading (and dropping) the client's bytes before it closes."""


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol held to :attr:`limits`."""

    limits: ClassVar[EdgeLimits] = EdgeLimits()

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keepalive_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True
        self._head_bytes = 0
        self._refused = False
        self._last_request = False  # an upgrade request: nothing after it is parsed

    @classmethod
    def bound(cls, limits: EdgeLimits) -> "type[EdgeProtocol]":
        """This protocol class held to ``limits`` (for uvicorn's ``http`` setting)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    # ---- connection ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            metrics.HTTP_REFUSED.labels("connection_limit").inc()
            self._answer(TooManyConnections("The server has too many connections open; retry shortly."))
            transport.close()
            self._refused = True
            return
        connection = transport.get_extra_info("socket")
        if connection is not None:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._arm(self.limits.header_timeout, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self._last_request:
            return
        if self._awaiting_head:
            self._head_bytes += len(data)
            if self._timer is None and self._idle():
                self._arm(self.limits.header_timeout, self._head_expired)
        super().data_received(data)
        if self._awaiting_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(self._head_too_large(), "header_too_large")

    def send_400_response(self, msg: str) -> None:
        """A request llhttp cannot parse: an OpenAI 400 (nothing more when it was refused already)."""
        self._refuse(InvalidRequest(f"Invalid HTTP request: {msg}", code="invalid_http"), "bad_request")

    def _should_upgrade(self) -> bool:
        """Never: the gateway serves no WebSocket, and every upgrade is refused (:meth:`on_headers_complete`)."""
        return False

    def _unsupported_upgrade_warning(self) -> None:
        """Upgrades are refused in :meth:`on_headers_complete`; uvicorn's warning per request would let any
        client fill the log."""

    # ---- parser callbacks ------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if self._refused:
            return  # a request after a refused one, in the same read
        self._awaiting_head = False
        self._head_bytes = 0
        self._disarm()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._refuse(self._head_too_large(), "header_too_large")
            return
        upgrade = self.parser.should_upgrade()
        if upgrade and self._declares_body():
            refusal = InvalidRequest("Protocol upgrades are not supported.", param="upgrade", code="upgrade_refused")
            self._refuse(refusal, "upgrade")
            return
        self.start_request()
        if upgrade:
            self._last_request = True
            self.cycle.keep_alive = False
        if not self.pipeline:  # a pipelined request's body is read once it is its turn
            self._arm(self.limits.body_timeout, self._body_expired)

    def start_request(self) -> None:
        """Serve the request whose head has arrived (uvicorn's ASGI request cycle)."""
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._awaiting_head = True
        self._head_bytes = 0
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if not self._awaiting_head:
            if self._timer is None:  # a pipelined request, now being read
                self._arm(self.limits.body_timeout, self._body_expired)
            return
        if self._head_bytes and self._timer is None:  # the next request had begun during the response
            self._arm(self.limits.header_timeout, self._head_expired)
        if self._idle():
            self.cycle = None
            self.scope = None
            self.headers = []
            self.url = b""

    # ---- deadlines -------------------------------------------------------------------------------

    def _idle(self) -> bool:
        """No response is being produced on the connection."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self, seconds: float, expired: Callable[[], object]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_expired(self) -> None:
        self._timer = None
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        timeout = self.limits.header_timeout
        self._refuse(RequestTimeout(f"The request headers took longer than {timeout:g} s."), "header_timeout")

    def _body_expired(self) -> None:
        self._timer = None
        cycle = self.cycle
        started = cycle is not None and cycle.response_started
        if cycle is not None:
            cycle.disconnected = True  # the request stops waiting for its body, and writes nothing more
            cycle.message_event.set()
        if started:
            metrics.HTTP_REFUSED.labels("body_timeout").inc()
            self.transport.close()
            return
        timeout = self.limits.body_timeout
        self._refuse(RequestTimeout(f"The request body took longer than {timeout:g} s."), "body_timeout")

    # ---- refusals --------------------------------------------------------------------------------

    def _head_too_large(self) -> HeaderTooLarge:
        limit = self.limits.max_header_bytes
        return HeaderTooLarge(f"The request line and headers are larger than the limit of {limit} bytes.")

    def _declares_body(self) -> bool:
        return any(
            (name == b"content-length" and value.strip() not in (b"", b"0")) or name == b"transfer-encoding"
            for name, value in self.headers
        )

    def _refuse(self, error: OpenAIError, reason: str) -> None:
        """Answer ``error`` and close the connection once the client has had time to read it; what the client
        sends meanwhile is dropped. Once per connection. While a response is being sent (the fault is in a
        request pipelined behind it), that response ends first and the connection closes after it, unanswered."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        metrics.HTTP_REFUSED.labels(reason).inc()
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            cycle.keep_alive = False
            return
        self._answer(error)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER, self.transport.close)

    def _answer(self, error: OpenAIError) -> None:
        body = render_error(error, "other")
        head = [STATUS_LINE[error.status_code]]
        for name, value in self.server_state.default_headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"content-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
