"""The HTTP edge on a real server on loopback, raw sockets: head size (431), head and body deadlines (408),
a silent connection closed, the keep-alive timeout, the connection limit (503), unparsable requests (400),
each an OpenAI error with ``connection: close``, counted by reason. (The hostile suite mounts the same
attacks at scale against real processes.)"""

import socket
import time
from collections.abc import Iterator

import orjson
import pytest

from gateway.config import Settings
from gateway.edge.limits import FD_SPARE, EdgeLimits, connection_capacity
from lab.fakes.fake_upstream import FakeUpstreamConfig, FakeUpstreamThread
from tests.conftest import RunningServer, metric
from tests.upstreams import proxy_gateway

LIMITS = {"http_max_header_bytes": 4096, "http_header_timeout": 0.5, "http_body_timeout": 0.5}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstreamThread]:
    with FakeUpstreamThread(FakeUpstreamConfig(tokens=2)) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def edge(fake: FakeUpstreamThread) -> Iterator[RunningServer]:
    """A proxying gateway (native fast path) with small limits."""
    with proxy_gateway(fake.base_url, http_keepalive_timeout=0.5, **LIMITS) as server:
        yield server


def _exchange(server: RunningServer, *parts: bytes, timeout: float = 10) -> bytes:
    """Send ``parts`` (a short pause between them), then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as connection:
        for part in parts:
            connection.sendall(part)
            time.sleep(0.05)
        received = bytearray()
        while chunk := connection.recv(65536):
            received += chunk
    return bytes(received)


def _error(answer: bytes) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head and b"content-type: application/json" in head
    return orjson.loads(body)["error"]


def _refused(server: RunningServer, reason: str) -> float:
    return metric(server.base_url, "sinkwatch_http_refused_total", reason=reason)


def test_a_head_over_the_limit_is_answered_431(edge: RunningServer):
    before = _refused(edge, "header_too_large")
    big = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 8192 + b"\r\n\r\n"
    answer = _exchange(edge, big)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert _error(answer)["code"] == "request_header_too_large"
    assert _refused(edge, "header_too_large") == before + 1


def test_a_head_that_never_ends_is_refused_once_past_the_limit_unbuffered(edge: RunningServer):
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as connection:
        connection.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: ")
        for _ in range(4):
            connection.sendall(b"a" * 1024)
        connection.sendall(b"a" * 1024)  # past 4096 bytes, with no end of line in sight
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_a_slow_head_is_answered_408_at_its_deadline(edge: RunningServer):
    started = time.monotonic()
    answer = _exchange(edge, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert _error(answer)["code"] == "request_timeout"
    assert 0.4 < time.monotonic() - started < 5


@pytest.mark.parametrize("expect", [False, True], ids=["native", "asgi-100-continue"])
def test_a_slow_body_is_answered_408_at_its_deadline(edge: RunningServer, expect: bool):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n"
    answer = _exchange(edge, head + (b"expect: 100-continue\r\n" if expect else b"") + b"\r\n", b'{"model": ')
    if expect:
        assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        answer = answer.split(b"\r\n\r\n", 1)[1]
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert "body" in _error(answer)["message"]


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(edge: RunningServer):
    assert _exchange(edge) == b""


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(edge: RunningServer):
    answer = _exchange(edge, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 1


def test_an_unparsable_request_is_answered_400_as_an_openai_error(edge: RunningServer):
    answer = _exchange(edge, b"\x00\x01 nonsense\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert _error(answer)["code"] == "invalid_http"


def test_connections_beyond_the_limit_are_answered_503_and_closed(fake: FakeUpstreamThread):
    with proxy_gateway(fake.base_url, http_max_connections=2) as server:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
        answer = _exchange(server)
        for connection in held:
            connection.close()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert _error(answer)["code"] == "too_many_connections"


def test_the_connection_limit_leaves_file_descriptors_for_upstreams_and_files(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("resource.getrlimit", lambda _: (1024, 4096))
    assert connection_capacity() == (1024 - FD_SPARE) // 2
    assert EdgeLimits.from_settings(Settings(http_max_connections=10_000)).max_connections == connection_capacity()
    assert EdgeLimits.from_settings(Settings(http_max_connections=10)).max_connections == 10


def test_a_request_refused_behind_a_stream_lets_the_stream_end_then_closes_the_connection():
    with (
        FakeUpstreamThread(FakeUpstreamConfig(tokens=40, token_interval=0.05)) as slow,
        proxy_gateway(slow.base_url, **LIMITS) as server,
    ):
        body = orjson.dumps({"model": "fake-model", "prompt": "hi", "stream": True})
        stream = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
        pipelined = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 8192 + b"\r\n\r\n"
        answer = _exchange(server, stream, pipelined)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 1
    assert answer.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
