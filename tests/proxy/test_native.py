"""The native fast path: which requests skip ASGI, and HTTP/1.1 on a raw socket (pipelining, chunked
bodies, HTTP/1.0, ``connection: close``, a failure inside the relay)."""

import asyncio
import socket
import time

import httpx
import orjson
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from gateway.app import create_app
from gateway.config import Settings
from gateway.proxy.native import NativeExchange
from gateway.proxy.proxied_request import ProxiedRequest
from gateway.server import http_protocol
from tests.upstreams import CHAT, FAKE_MODEL

BODY = orjson.dumps(CHAT)
COMPLETION = orjson.dumps({"model": FAKE_MODEL, "prompt": "hi"})


def _request(target: str = "/v1/chat/completions", version: str = "1.1", body: bytes = BODY, **headers: str) -> bytes:
    lines = [f"POST {target} HTTP/{version}", "host: gateway", f"content-length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Transport(asyncio.Transport):
    """Collects what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _protocol(cors_origins: str = "") -> tuple[asyncio.Protocol, _Transport]:
    """The gateway's HTTP protocol on a fake connection (backend not started: it answers 503)."""
    settings = Settings().replace(backend="openai", upstreams="http://127.0.0.1:9/v1", cors_origins=cors_origins)
    app = create_app(settings)
    config = uvicorn.Config(app, http=http_protocol(app))
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def _cycle_after(request: bytes, cors_origins: str = "") -> object:
    """The request cycle the gateway's protocol makes for ``request``, once it has answered."""
    protocol, transport = _protocol(cors_origins)
    protocol.data_received(request)
    cycle = protocol.cycle
    await asyncio.gather(*protocol.tasks)
    assert b"HTTP/1.1 503 " in transport.written  # after "100 Continue" when the client expects it
    assert orjson.loads(transport.written.rpartition(b"\r\n\r\n")[2])["error"]["type"] == "server_error"
    return cycle


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("request_bytes", "native"),
    [
        (_request(), True),
        (_request("/v1/completions", body=COMPLETION), True),
        (_request(version="1.0"), False),
        (_request("/v1/chat/completions?x=1"), False),
        (_request("http://gateway/v1/chat/completions"), False),
        (_request(expect="100-continue"), False),
    ],
    ids=["chat", "completions", "http-1.0", "query", "absolute-url", "expect-100"],
)
async def test_generation_requests_skip_asgi_unless_http_needs_the_full_server(request_bytes, native):
    cycle = await _cycle_after(request_bytes)
    assert isinstance(cycle, NativeExchange if native else RequestResponseCycle)


@pytest.mark.anyio
async def test_an_upgrade_request_is_left_to_uvicorn_and_its_connection_closes_after_it():
    protocol, _ = _protocol()
    protocol.data_received(_request(body=b"", connection="upgrade", upgrade="h2c"))
    assert isinstance(protocol.cycle, RequestResponseCycle)
    assert not protocol.cycle.keep_alive
    for task in protocol.tasks:
        task.cancel()


@pytest.mark.anyio
async def test_an_upgrade_request_with_a_body_is_refused_before_anything_is_served():
    protocol, transport = _protocol()
    protocol.data_received(_request(connection="upgrade", upgrade="h2c"))
    assert protocol.cycle is None and not protocol.tasks
    assert transport.written.startswith(b"HTTP/1.1 400 ")
    assert orjson.loads(transport.written.rpartition(b"\r\n\r\n")[2])["error"]["code"] == "upgrade_refused"


@pytest.mark.anyio
async def test_with_cors_on_a_cross_origin_request_takes_the_asgi_path_for_its_headers():
    origins = "https://app.example"
    assert isinstance(await _cycle_after(_request(), origins), NativeExchange)
    assert isinstance(await _cycle_after(_request(origin=origins), origins), RequestResponseCycle)


def _raw(port: int, *parts: bytes) -> bytes:
    """Send ``parts`` (a pause between them) and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        for index, part in enumerate(parts):
            if index:
                time.sleep(0.05)
            connection.sendall(part)
        received = bytearray()
        while chunk := connection.recv(65536):
            received += chunk
    return bytes(received)


def _responses(data: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Status line, headers and body of each content-length-framed response in ``data``."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = {name.lower(): value for name, _, value in (line.partition(b": ") for line in lines)}
        length = int(headers[b"content-length"])
        found.append((status, headers, rest[:length]))
        data = rest[length:]
    return found


def test_pipelined_requests_are_answered_in_order(proxy):
    first = _request(x_request_id="first")
    second = _request("/v1/completions", body=COMPLETION, x_request_id="second", connection="close")
    answers = _responses(_raw(proxy.port, first + second))
    assert [status for status, _, _ in answers] == [b"HTTP/1.1 200 OK"] * 2
    assert [headers[b"x-request-id"] for _, headers, _ in answers] == [b"first", b"second"]
    assert [orjson.loads(body)["object"] for _, _, body in answers] == ["chat.completion", "text_completion"]


def test_a_chunked_request_body_sent_in_parts_is_read_whole(upstream, proxy):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\n"
    head += b"connection: close\r\n\r\n"
    half = len(BODY) // 2
    parts = (head + b"%x\r\n%b\r\n" % (half, BODY[:half]), b"%x\r\n%b\r\n0\r\n\r\n" % (len(BODY) - half, BODY[half:]))
    [(status, headers, body)] = _responses(_raw(proxy.port, *parts))
    assert status == b"HTTP/1.1 200 OK" and headers[b"connection"] == b"close"
    assert body == httpx.post(f"{upstream.base_url}/chat/completions", content=BODY).content


def test_an_http_1_0_client_gets_the_same_answer_and_a_closed_connection(upstream, proxy):
    [(status, _, body)] = _responses(_raw(proxy.port, _request(version="1.0")))
    assert status.endswith(b" 200 OK")
    assert body == httpx.post(f"{upstream.base_url}/chat/completions", content=BODY).content


def test_a_failure_inside_the_relay_is_a_500_in_openai_format_and_the_connection_closes(proxy, monkeypatch):
    async def broken(*args: object) -> None:
        raise RuntimeError("a bug in the relay")

    monkeypatch.setattr(ProxiedRequest, "_relay_whole", broken)
    [(status, headers, body)] = _responses(_raw(proxy.port, _request()))
    assert status == b"HTTP/1.1 500 Internal Server Error" and headers[b"connection"] == b"close"
    assert orjson.loads(body)["error"] == {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
