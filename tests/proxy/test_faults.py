"""Upstream faults become OpenAI errors (a final error event once a stream has begun), counted by kind;
a client that goes away cancels the upstream request."""

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway.config import Settings
from lab.fakes.fake_upstream import FakeUpstreamConfig, FakeUpstreamThread, Fault
from tests.conftest import RunningServer, free_port, metric, start_gateway, wait_for
from tests.upstreams import CHAT, client_of, proxy_gateway

STREAM = {**CHAT, "stream": True}


@pytest.fixture
def slow_upstream() -> Iterator[FakeUpstreamThread]:
    """A fake upstream streaming 40 tokens, one every 50 ms."""
    with FakeUpstreamThread(FakeUpstreamConfig(tokens=40, token_interval=0.05)) as fake:
        yield fake


@pytest.fixture
def impatient(upstream: FakeUpstreamThread) -> Iterator[RunningServer]:
    """A gateway that waits 0.5 s for the upstream's next byte and checks health rarely."""
    with proxy_gateway(upstream.base_url, upstream_read_timeout=0.5, upstream_health_interval=60) as server:
        yield server


def _events(server: RunningServer, body: dict) -> list[dict | str]:
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    return [payload if payload == "[DONE]" else json.loads(payload) for payload in payloads]


def _upstream_errors(server: RunningServer, kind: str) -> float:
    return metric(server.base_url, "sinkwatch_upstream_errors_total", kind=kind)


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        (Fault.RESET, "reset", "upstream_reset"),
        (Fault.BAD_JSON, "malformed", "upstream_malformed"),
        (Fault.BAD_SSE, "malformed", "upstream_malformed"),
        (Fault.TRUNCATED, "malformed", "upstream_malformed"),
    ],
)
def test_a_stream_broken_midway_ends_with_an_error_event_then_done(upstream, impatient, fault, kind, code):
    upstream.config.fault = fault
    before = _upstream_errors(impatient, kind)
    events = _events(impatient, STREAM)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == code and error["type"] == "upstream_error" and error["message"]
    texts = [e["choices"][0]["delta"].get("content") for e in events[:-2]]
    assert texts == ["", " w0", " w1"]  # what came before the fault, and nothing broken
    assert _upstream_errors(impatient, kind) - before == 1


def test_the_official_client_raises_the_mid_stream_error(upstream, impatient):
    upstream.config.fault = Fault.RESET
    with pytest.raises(openai.APIError, match="upstream"):
        for _ in client_of(impatient).chat.completions.create(**STREAM):
            pass


@pytest.mark.parametrize("stream", [False, True])
def test_a_wrong_content_type_is_a_502(upstream, impatient, stream):
    upstream.config.fault = Fault.WRONG_TYPE
    response = httpx.post(f"{impatient.base_url}/v1/chat/completions", json={**CHAT, "stream": stream}, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_malformed"


def test_a_whole_answer_that_is_not_json_is_a_502(upstream, impatient):
    upstream.config.fault = Fault.BAD_JSON
    with pytest.raises(openai.APIStatusError) as raised:
        client_of(impatient).chat.completions.create(**CHAT)
    assert raised.value.status_code == 502


def test_an_upstream_5xx_is_a_502_counted_as_status(upstream, impatient):
    upstream.config.fault = Fault.STATUS_500
    before = _upstream_errors(impatient, "status")
    response = httpx.post(f"{impatient.base_url}/v1/chat/completions", json=CHAT, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_status"
    assert _upstream_errors(impatient, "status") - before == 1


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_that_does_not_answer_in_time_is_a_504(upstream, impatient, stream):
    upstream.config.fault = Fault.SLOW
    before = _upstream_errors(impatient, "timeout")
    started = time.monotonic()
    response = httpx.post(f"{impatient.base_url}/v1/chat/completions", json={**CHAT, "stream": stream}, timeout=10)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 0.95
    assert _upstream_errors(impatient, "timeout") - before == 1


def test_a_stream_that_stalls_midway_times_out_with_an_error_event(slow_upstream):
    with proxy_gateway(slow_upstream.base_url, upstream_read_timeout=0.3) as server:
        slow_upstream.config.token_interval = 1.0
        events = _events(server, STREAM)
    assert events[-2]["error"]["code"] == "upstream_timeout"
    assert events[-1] == "[DONE]"


def test_a_refused_upstream_is_a_502_and_counted(upstream, impatient):
    before = _upstream_errors(impatient, "connect")
    upstream.stop()
    response = httpx.post(f"{impatient.base_url}/v1/chat/completions", json=CHAT, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert _upstream_errors(impatient, "connect") - before == 1


def test_with_no_upstream_reachable_the_gateway_is_not_ready():
    dead = f"http://127.0.0.1:{free_port()}/v1"
    settings = Settings().replace(backend="openai", upstreams=dead, port=free_port(), upstream_health_interval=60)
    with start_gateway(settings) as server:
        time.sleep(0.5)
        assert httpx.get(f"{server.base_url}/readyz").status_code == 503
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json=CHAT, timeout=10)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "model_loading"


def test_a_client_leaving_a_stream_cancels_the_upstream_request(slow_upstream):
    with proxy_gateway(slow_upstream.base_url) as server:
        before = metric(server.base_url, "sinkwatch_requests_total", outcome="cancelled")
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=STREAM, timeout=10) as response:
            lines = response.iter_lines()
            while not next(lines).startswith("data: {"):
                pass
        wait_for(lambda: slow_upstream.stats.cancelled == 1)
        assert slow_upstream.stats.active == 0
        assert slow_upstream.stats.completed == 1  # the health check only
        assert metric(server.base_url, "sinkwatch_requests_total", outcome="cancelled") - before == 1
        assert metric(server.base_url, "sinkwatch_upstream_in_flight") == 0


def test_a_client_giving_up_on_a_whole_answer_cancels_the_upstream_request(slow_upstream):
    with proxy_gateway(slow_upstream.base_url) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.base_url}/v1/chat/completions", json=CHAT, timeout=0.3)
        wait_for(lambda: slow_upstream.stats.cancelled == 1)
        assert slow_upstream.stats.active == 0
