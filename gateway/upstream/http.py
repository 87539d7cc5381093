"""A lean HTTP/1.1 client for upstream model servers: keep-alive connections to one origin.

It does one thing: send a request (a JSON body) to a known origin over a pooled keep-alive connection
and hand back the response's status, headers and body bytes as they arrive, parsed by httptools (the
parser uvicorn serves with). httpx costs about a millisecond of CPU per request on this project's
machines, more than the gateway's whole overhead budget (docs/BENCHMARKS.md); this costs tens of
microseconds. Failures come out as :class:`TransportError` subclasses named for what went wrong, so the
caller can count them and decide about failover.

Backpressure: a response body is buffered up to ``HIGH_WATER`` bytes, then the socket stops being read
until the consumer catches up (and the kernel holds at most ``RECEIVE_BUFFER`` bytes more). A response
not read to its end is never reused: closing it early closes its connection (which is how an upstream
learns that a client went away).

Deadlines: every wait for bytes ends after ``read_timeout`` seconds; a :class:`Deadline` bounds a whole
exchange besides (a response head that never ends, an answer dripped a byte at a time).
"""

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

import httptools

__all__ = ["ConnectFailed", "Deadline", "HttpPool", "HttpResponse", "Origin", "ReadTimeout", "TransportError"]

HIGH_WATER = 1 << 16
RECEIVE_BUFFER = 1 << 17  # what the kernel holds of a response not being read (autotuning: up to megabytes)


class TransportError(Exception):
    """An upstream request failed below HTTP semantics; ``kind`` names how, for metrics."""

    kind: ClassVar[str] = "reset"


class ConnectFailed(TransportError):
    """No connection could be opened (refused, unreachable, timed out): nothing was sent."""

    kind = "connect"


class ReadTimeout(TransportError):
    """The upstream sent nothing for longer than the read timeout."""

    kind = "timeout"


class ConnectionBroken(TransportError):
    """The connection closed before the response was complete."""

    kind = "reset"


class MalformedResponse(TransportError):
    """The bytes received are not a valid HTTP/1.1 response."""

    kind = "malformed"


@dataclass(frozen=True)
class Deadline:
    """A time on the event loop's clock by which something must have arrived, and what to say if not."""

    at: float
    missed: str

    @classmethod
    def after(cls, seconds: float, missed: str) -> "Deadline":
        """``seconds`` from now."""
        return cls(asyncio.get_running_loop().time() + seconds, missed)

    def limit(self, timeout: float) -> tuple[float, str | None]:
        """The wait allowed now, at most ``timeout``, and the deadline's message when the deadline is what
        limits it; ``ReadTimeout`` once it has passed."""
        left = self.at - asyncio.get_running_loop().time()
        if left <= 0:
            raise ReadTimeout(self.missed)
        return (left, self.missed) if left < timeout else (timeout, None)


class Origin:
    """Scheme, host and port of an upstream, with the path prefix of its API (e.g. ``/v1``)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://host[:port][/path], not {url!r}")
        self.url = url.rstrip("/")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        default_port = self.port == (443 if self.tls else 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One keep-alive connection; holds the state of the response being received on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.paused = False
        self._waiter: asyncio.Future | None = None
        self.begin()

    def begin(self) -> None:
        """Forget the previous response (the connection is about to carry a new request)."""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.keep_alive = False
        self.body = bytearray()
        self.complete = False
        self.error: TransportError | None = None
        self.received_any = False

    # ---- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.error = MalformedResponse(f"the upstream sent an invalid HTTP response ({exc})")
            self.transport.abort()
        if len(self.body) > HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.complete and self.error is None:
            if self.headers_done and self._delimited_by_close():
                self.complete = True
            else:
                when = "mid-response" if self.headers_done else "before answering"
                self.error = ConnectionBroken(f"the upstream closed the connection {when}")
        self._wake()

    def _delimited_by_close(self) -> bool:
        return "content-length" not in self.headers and "chunked" not in self.headers.get("transfer-encoding", "")

    # ---- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    # ---- waiting ---------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float, deadline: Deadline | None = None) -> None:
        """Until something arrives (or the connection breaks); ``ReadTimeout`` after ``timeout`` seconds, or
        sooner at ``deadline``."""
        timeout, missed = deadline.limit(timeout) if deadline is not None else (timeout, None)
        waiter = self._waiter = self.loop.create_future()
        message = missed or f"the upstream sent nothing for {timeout:g} s"
        timer = self.loop.call_later(timeout, _expire, waiter, message)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    @property
    def reusable(self) -> bool:
        """The response is complete and both sides keep the connection open."""
        return self.complete and self.keep_alive and not self.lost and self.error is None

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()


def _expire(waiter: asyncio.Future, message: str) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout(message))


class HttpResponse:
    """A response whose headers have arrived; read its body, then close it (``async with`` does)."""

    def __init__(self, connection: _Connection, pool: "HttpPool", read_timeout: float) -> None:
        self._connection = connection
        self._pool = pool
        self._read_timeout = read_timeout
        self._closed = False
        self.status = connection.status
        self.headers = connection.headers

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    async def read_chunk(self, deadline: Deadline | None = None) -> bytes:
        """Body bytes received and not read yet, at most ``HIGH_WATER`` (waiting for some, until ``deadline`` at
        the latest); ``b""`` once the body is complete."""
        connection = self._connection
        while not connection.body:
            if connection.complete:
                await self.aclose()
                return b""
            if connection.error is not None:
                raise connection.error
            await connection.wait(self._read_timeout, deadline)
        body = connection.body
        data = bytes(body[:HIGH_WATER])  # a burst is handed on in pieces: what waits behind a slow client stays small
        del body[:HIGH_WATER]
        if connection.paused and not body and not connection.lost:
            connection.paused = False
            connection.transport.resume_reading()
        return data

    async def read_all(self, limit: int, deadline: Deadline | None = None) -> bytes:
        """The whole body (by ``deadline``); ``MalformedResponse`` as soon as it is known to be longer than
        ``limit`` bytes (declared or received: never buffered past it)."""
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self.aclose()
            raise MalformedResponse(f"the upstream response is larger than {limit} bytes ({declared} declared)")
        body = bytearray()
        while chunk := await self.read_chunk(deadline):
            if len(body) + len(chunk) > limit:
                await self.aclose()
                raise MalformedResponse(f"the upstream response is larger than {limit} bytes")
            body += chunk
        return bytes(body)

    async def aclose(self) -> None:
        """Give the connection back if the body was read to its end, else close it."""
        if not self._closed:
            self._closed = True
            self._pool.release(self._connection)

    async def __aenter__(self) -> "HttpResponse":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class HttpPool:
    """Keep-alive connections to one origin, at most ``max_connections`` open at a time."""

    def __init__(
        self,
        origin: Origin,
        *,
        max_connections: int,
        max_idle: int,
        connect_timeout: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.origin = origin
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._ssl = ssl.create_default_context() if origin.tls else None
        fixed = {"host": origin.host_header, "user-agent": "sinkwatch", **(headers or {})}
        self._fixed_headers = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")

    @property
    def idle(self) -> int:
        """Open connections waiting for a request."""
        return len(self._idle)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        read_timeout: float,
        deadline: Deadline | None = None,
    ) -> HttpResponse:
        """Send a request and wait for the response headers, by ``deadline`` when given (``path`` is under the
        origin's prefix)."""
        if self._slots.locked():
            try:
                await asyncio.wait_for(self._slots.acquire(), self._connect_timeout)
            except TimeoutError:
                raise ConnectFailed("every connection to the upstream is busy") from None
        else:
            await self._slots.acquire()
        head = self._head(method, path, body, headers)
        try:
            connection = await self._send(head, body, read_timeout, deadline)
        except BaseException:
            self._slots.release()
            raise
        return HttpResponse(connection, self, read_timeout)

    def _head(self, method: str, path: str, body: bytes, headers: dict[str, str] | None) -> bytes:
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items()) if headers else ""
        target = self.origin.prefix + path
        length = f"content-type: application/json\r\ncontent-length: {len(body)}\r\n" if body else ""
        return (
            f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
            + self._fixed_headers
            + (extra + length).encode("latin-1")
            + b"\r\n"
        )

    async def _send(self, head: bytes, body: bytes, read_timeout: float, deadline: Deadline | None) -> _Connection:
        """Write the request on an idle connection (once more on a fresh one if the idle one had died)."""
        while True:
            connection = self._take_idle()
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            connection.begin()
            connection.transport.write(head + body)
            try:
                while not connection.headers_done:
                    if connection.error is not None:
                        raise connection.error
                    await connection.wait(read_timeout, deadline)
                return connection
            except ConnectionBroken:
                connection.close()
                if reused and not connection.received_any:
                    continue  # the server had closed the idle connection; nothing was processed
                raise
            except BaseException:
                connection.close()
                raise

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.lost and not connection.transport.is_closing():
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl else None,
                ),
                self._connect_timeout,
            )
        except TimeoutError:
            raise ConnectFailed(f"connecting to the upstream timed out after {self._connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to the upstream ({exc.strerror or type(exc).__name__})") from None
        return connection

    def release(self, connection: _Connection) -> None:
        """Back to the idle list if it can carry another request, else closed; frees a slot either way."""
        self._slots.release()
        if connection.reusable and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Close every idle connection (responses still being read close theirs when done)."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()
