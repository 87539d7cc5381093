"""A fast fake OpenAI-compatible upstream on loopback, for proxy benchmarks and fault tests.

Raw asyncio + httptools (no framework), so that it costs far less per request than anything it is
compared with. It serves ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``,
whole or as server-sent events at a controlled token rate, and it can misbehave on purpose
(:class:`Fault`). It counts what it saw, including streams whose client went away before the end
(``cancelled``), so tests can check that the gateway cancels upstream work.

Run it alone with ``python -m lab.fakes.fake_upstream --port 9000``.
"""

import argparse
import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from enum import StrEnum

import httptools
import orjson

__all__ = ["FakeUpstream", "FakeUpstreamConfig", "FakeUpstreamThread", "Fault"]


class Fault(StrEnum):
    """How the fake upstream misbehaves (``none``: it does not)."""

    NONE = "none"
    SLOW = "slow"  # wait ``delay`` seconds before answering
    HANG = "hang"  # never answer
    RESET = "reset"  # stream a few tokens, then reset the connection
    TRUNCATED = "truncated"  # stream a few tokens, then end cleanly without a finish or [DONE]
    BAD_JSON = "bad_json"  # an event (or body) that is not JSON
    BAD_SSE = "bad_sse"  # bytes that are not server-sent events at all
    WRONG_TYPE = "wrong_type"  # an HTML page instead of JSON or SSE
    STATUS_500 = "status_500"
    STATUS_503 = "status_503"
    STATUS_400 = "status_400"  # an OpenAI-format client error


@dataclass
class FakeStats:
    """What the fake upstream saw."""

    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    active: int = 0
    connections: int = 0
    open_connections: int = 0
    request_ids: list[str] = field(default_factory=list)
    traceparents: list[str] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)


@dataclass
class FakeUpstreamConfig:
    """Behaviour of the fake upstream; fields may be changed while it runs."""

    model: str = "fake-model"
    tokens: int = 16
    token_interval: float = 0.0
    fault: Fault = Fault.NONE
    delay: float = 1.0
    fault_after_tokens: int = 2
    record_bodies: bool = False


_STATUS_TEXT = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error", 503: b"Unavailable"}


def _head(status: int, content_type: bytes, length: int | None) -> bytes:
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n%s\r\n\r\n" % (
        status,
        _STATUS_TEXT.get(status, b"Status"),
        content_type,
        framing,
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_LAST_CHUNK = b"0\r\n\r\n"
ACCEPT_BACKLOG = 2048
CREATED = 1_700_000_000  # fixed, so that answers are byte-identical across requests
_JSON = b"application/json"
_SSE = b"text/event-stream"


class _Shapes:
    """Response bodies of one request, pre-rendered where they do not change per token."""

    def __init__(self, chat: bool, model: str, created: int) -> None:
        self.chat = chat
        self.prefix = self._prefix("chat.completion.chunk" if chat else "text_completion", model, created)
        self.whole_prefix = self._prefix("chat.completion" if chat else "text_completion", model, created)

    def _prefix(self, kind: str, model: str, created: int) -> bytes:
        identity = {"id": "chatcmpl-fake" if self.chat else "cmpl-fake", "object": kind, "created": created}
        return orjson.dumps({**identity, "model": model})[:-1]

    def token_event(self, text: str) -> bytes:
        choice = {"index": 0, "delta": {"content": text}} if self.chat else {"index": 0, "text": text}
        choice["finish_reason"] = None
        return b"data: " + self.prefix + b',"choices":[' + orjson.dumps(choice) + b"]}\n\n"

    def role_event(self) -> bytes:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        return b"data: " + self.prefix + b',"choices":[' + orjson.dumps(choice) + b"]}\n\n"

    def finish_event(self, reason: str) -> bytes:
        choice = {"index": 0, "delta": {}} if self.chat else {"index": 0, "text": ""}
        choice["finish_reason"] = reason
        return b"data: " + self.prefix + b',"choices":[' + orjson.dumps(choice) + b"]}\n\n"

    def usage_event(self, usage: dict) -> bytes:
        return b"data: " + self.prefix + b',"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n"

    def whole(self, text: str, reason: str, usage: dict) -> bytes:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "finish_reason": reason}
        return self.whole_prefix + b',"choices":[' + orjson.dumps(choice) + b'],"usage":' + orjson.dumps(usage) + b"}"


def token_text(index: int) -> str:
    """The fake's ``index``-th completion token."""
    return f" w{index}"


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests on it are answered in order."""

    def __init__(self, server: "FakeUpstream") -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.method = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.task: asyncio.Task | None = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.streaming = False

    # -- protocol callbacks ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.server.stats.connections += 1
        self.server.stats.open_connections += 1
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.stats.open_connections -= 1
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.headers = {}
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.queue.put_nowait((self.parser.get_method(), self.url, self.headers, bytes(self.body)))

    # -- answering ------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        stats = self.server.stats
        while True:
            method, url, headers, body = await self.queue.get()
            stats.requests += 1
            if request_id := headers.get(b"x-request-id"):
                stats.request_ids.append(request_id.decode())
            if traceparent := headers.get(b"traceparent"):
                stats.traceparents.append(traceparent.decode())
            stats.active += 1
            try:
                await self._answer(method, url.split(b"?")[0], body)
                stats.completed += 1
            except asyncio.CancelledError:
                stats.cancelled += 1
                raise
            finally:
                stats.active -= 1

    def _write(self, data: bytes) -> None:
        self.transport.write(data)

    def _send(self, status: int, content_type: bytes, body: bytes) -> None:
        self._write(_head(status, content_type, len(body)) + body)

    async def _answer(self, method: bytes, path: bytes, body: bytes) -> None:
        config = self.server.config
        if method == b"GET" and path == b"/v1/models":
            models = {"object": "list", "data": [{"id": config.model, "object": "model", "created": 0}]}
            self._send(200, _JSON, orjson.dumps(models))
            return
        if method != b"POST" or path not in (b"/v1/chat/completions", b"/v1/completions"):
            self._send(404, _JSON, b'{"error":{"message":"no such route","type":"invalid_request_error"}}')
            return
        fault = config.fault
        if fault is Fault.HANG:
            await asyncio.Event().wait()
        if fault is Fault.SLOW:
            await asyncio.sleep(config.delay)
        if fault in (Fault.STATUS_500, Fault.STATUS_503):
            self._send(int(fault.value[-3:]), _JSON, b'{"error":{"message":"upstream broke","type":"server_error"}}')
            return
        if fault is Fault.STATUS_400:
            error = {"message": "bad max_tokens", "type": "invalid_request_error", "param": "max_tokens", "code": None}
            self._send(400, _JSON, orjson.dumps({"error": error}))
            return
        if fault is Fault.WRONG_TYPE:
            self._send(200, b"text/html", b"<html><body>login required</body></html>")
            return
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            self._send(400, _JSON, b'{"error":{"message":"invalid json","type":"invalid_request_error"}}')
            return
        if config.record_bodies:
            self.server.stats.bodies.append(request)
        chat = path == b"/v1/chat/completions"
        limit = request.get("max_completion_tokens") or request.get("max_tokens") or config.tokens
        count = min(int(limit), config.tokens)
        usage = {"prompt_tokens": max(1, len(body) // 16), "completion_tokens": count, "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + count
        shapes = _Shapes(chat, request.get("model", config.model), CREATED)
        reason = "length" if count < config.tokens else "stop"
        if request.get("stream"):
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            await self._stream(shapes, count, reason, usage if include_usage else None)
            return
        if config.token_interval:
            await asyncio.sleep(config.token_interval * count)
        if fault is Fault.BAD_JSON:
            self._send(200, _JSON, b'{"id": "cmpl-fake", "choices": [')
            return
        self._send(200, _JSON, shapes.whole("".join(token_text(i) for i in range(count)), reason, usage))

    async def _stream(self, shapes: _Shapes, count: int, reason: str, usage: dict | None) -> None:
        config, fault = self.server.config, self.server.config.fault
        self._write(_head(200, _SSE, None))
        if shapes.chat:
            self._write(_chunk(shapes.role_event()))
        for i in range(count):
            if config.token_interval:
                await asyncio.sleep(config.token_interval)
            if i == config.fault_after_tokens and fault is not Fault.NONE:
                if fault is Fault.RESET:
                    self.transport.abort()
                    return
                if fault is Fault.TRUNCATED:
                    self._write(_LAST_CHUNK)
                    return
                if fault is Fault.BAD_JSON:
                    self._write(_chunk(b"data: {not json\n\n"))
                if fault is Fault.BAD_SSE:
                    self._write(_chunk(b"\xff\xfe<binary garbage>\n\n"))
            self._write(_chunk(shapes.token_event(token_text(i))))
            await asyncio.sleep(0)
        tail = shapes.finish_event(reason)
        if usage is not None:
            tail += shapes.usage_event(usage)
        self._write(_chunk(tail + b"data: [DONE]\n\n") + _LAST_CHUNK)


class FakeUpstream:
    """The fake server; ``async with`` it, or ``start_in_thread()`` it, then use ``base_url``."""

    def __init__(self, config: FakeUpstreamConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or FakeUpstreamConfig()
        self.stats = FakeStats()
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://host:port/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def _protocol(self) -> _Connection:
        connection = _Connection(self)
        self._connections.add(connection)
        return connection

    async def start(self) -> None:
        """Listen (on a free port when ``port`` is 0), with uvicorn's accept backlog, as a real model server
        would: asyncio's default of 100 drops connection attempts when a gateway opens hundreds at once."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port, backlog=ACCEPT_BACKLOG)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            for connection in self._connections:
                if connection.transport is not None:
                    connection.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def __aenter__(self) -> "FakeUpstream":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class FakeUpstreamThread:
    """A :class:`FakeUpstream` on its own event loop in a background thread (for synchronous tests)."""

    def __init__(self, config: FakeUpstreamConfig | None = None, port: int = 0) -> None:
        self.server = FakeUpstream(config, port=port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-upstream", daemon=True)

    @property
    def config(self) -> FakeUpstreamConfig:
        return self.server.config

    @property
    def stats(self) -> FakeStats:
        return self.server.stats

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def __enter__(self) -> "FakeUpstreamThread":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving (like a crashed upstream); safe to call again."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def main(argv: list[str] | None = None) -> None:
    """Serve the fake upstream until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--token-interval", type=float, default=0.0)
    parser.add_argument("--model", default="fake-model")
    args = parser.parse_args(argv)

    async def serve() -> None:
        config = FakeUpstreamConfig(model=args.model, tokens=args.tokens, token_interval=args.token_interval)
        async with FakeUpstream(config, args.host, args.port) as server:
            print(f"fake upstream on {server.base_url}", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        _run(serve())


def _run(coroutine) -> None:
    try:
        import uvloop

        uvloop.run(coroutine)
    except ImportError:
        asyncio.run(coroutine)


if __name__ == "__main__":
    main()
