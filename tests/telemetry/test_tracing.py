"""Traces with the SDK's in-memory exporter: a SERVER span per request named by the GenAI conventions, a
CLIENT span per upstream call whose ``traceparent`` the upstream receives, a client's ``traceparent``
continued, on the native fast path, the ASGI path and the full serving path; gate attempts with the
real model; a request for several choices in one span."""

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.trace import SpanKind

from gateway.app import create_app
from gateway.config import Settings
from lab.fakes.fake_upstream import FakeUpstreamConfig, FakeUpstreamThread, Fault
from tests.conftest import MODEL, RunningServer, free_port, start_gateway, wait_for
from tests.gate.scripted import CALIBRATION
from tests.gate.scripted import MODEL as SCRIPTED_MODEL
from tests.gate.test_gate_e2e import LOOP
from tests.serving.test_choices import one_looping_choice
from tests.upstreams import CHAT, FAKE_MODEL, client_of, proxy_gateway

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
def upstream() -> Iterator[FakeUpstreamThread]:
    with FakeUpstreamThread(FakeUpstreamConfig(tokens=4)) as fake:
        yield fake


def _finished(spans, count: int) -> list:
    """The ended spans, once there are ``count`` (the request's span ends after the response is sent)."""
    wait_for(lambda: len(spans.get_finished_spans()) >= count)
    return list(spans.get_finished_spans())


def _one(found: list, kind: SpanKind):
    matching = [span for span in found if span.kind is kind]
    assert len(matching) == 1, [(span.name, span.kind) for span in found]
    return matching[0]


@pytest.mark.parametrize("stream", [False, True])
def test_a_proxied_request_is_a_server_span_with_a_client_span_the_upstream_continues(spans, upstream, stream):
    with proxy_gateway(upstream.base_url) as server:
        client = client_of(server, default_headers={"traceparent": TRACEPARENT})
        answer = client.chat.completions.create(
            model=FAKE_MODEL,
            messages=CHAT["messages"],
            stream=stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        )
        if stream:
            list(answer)
        found = _finished(spans, 2)
    request, call = _one(found, SpanKind.SERVER), _one(found, SpanKind.CLIENT)
    assert request.name == call.name == f"chat {FAKE_MODEL}"
    assert f"{request.context.trace_id:032x}" == CLIENT_TRACE
    assert f"{request.parent.span_id:016x}" == CLIENT_SPAN and request.parent.is_remote
    assert call.parent.span_id == request.context.span_id
    attributes = request.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == FAKE_MODEL
    assert attributes["gen_ai.usage.output_tokens"] == 4 and attributes["gen_ai.usage.input_tokens"] > 0
    assert tuple(attributes["gen_ai.response.finish_reasons"]) == ("stop",)
    assert attributes["http.response.status_code"] == 200
    assert call.attributes["sinkwatch.upstream"] and call.attributes["http.response.status_code"] == 200
    assert upstream.stats.traceparents == [f"00-{CLIENT_TRACE}-{call.context.span_id:016x}-01"]


def test_the_asgi_path_is_traced_like_the_native_one(spans, upstream):
    """A query string keeps a request off the native path; it is proxied through ASGI, traced the same."""
    with proxy_gateway(upstream.base_url) as server:
        body = {"model": FAKE_MODEL, "prompt": "hi"}
        response = httpx.post(
            f"{server.base_url}/v1/completions?via=asgi", json=body, headers={"traceparent": TRACEPARENT}
        )
        assert response.status_code == 200
        found = _finished(spans, 2)
    request, call = _one(found, SpanKind.SERVER), _one(found, SpanKind.CLIENT)
    assert request.name == f"text_completion {FAKE_MODEL}"
    assert request.attributes["sinkwatch.request_id"] == response.headers["x-request-id"]
    assert f"{request.context.trace_id:032x}" == CLIENT_TRACE and call.parent.span_id == request.context.span_id
    assert upstream.stats.traceparents == [f"00-{CLIENT_TRACE}-{call.context.span_id:016x}-01"]


def test_a_request_without_traceparent_starts_a_trace(spans, upstream):
    with proxy_gateway(upstream.base_url) as server:
        client_of(server).chat.completions.create(model=FAKE_MODEL, messages=CHAT["messages"])
        request = _one(_finished(spans, 2), SpanKind.SERVER)
    assert request.parent is None
    assert upstream.stats.traceparents[0].split("-")[1] == f"{request.context.trace_id:032x}"


def test_an_upstream_fault_marks_both_spans_as_errors(spans, upstream):
    upstream.config.fault = Fault.STATUS_500
    with proxy_gateway(upstream.base_url) as server:
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json=CHAT)
        assert response.status_code == 502
        found = _finished(spans, 2)
    request, call = _one(found, SpanKind.SERVER), _one(found, SpanKind.CLIENT)
    assert request.status.status_code.name == "ERROR" and request.attributes["http.response.status_code"] == 502
    assert call.status.status_code.name == "ERROR" and call.attributes["error.type"] == "status"


def test_with_tracing_off_the_clients_traceparent_still_reaches_the_upstream(upstream):
    with proxy_gateway(upstream.base_url) as server:
        client_of(server, default_headers={"traceparent": TRACEPARENT}).chat.completions.create(
            model=FAKE_MODEL, messages=CHAT["messages"]
        )
    assert upstream.stats.traceparents == [TRACEPARENT]


def test_the_vllm_backends_upstream_call_carries_the_trace(spans, upstream):
    """The vllm backend's relay path (unmonitored here: no features) sends its span's context upstream."""
    settings = Settings().replace(backend="vllm", capture=False, upstreams=upstream.base_url, port=free_port())
    with start_gateway(settings) as server:
        server.wait_ready(timeout=30)
        client_of(server, default_headers={"traceparent": TRACEPARENT}).chat.completions.create(
            model=FAKE_MODEL, messages=CHAT["messages"]
        )
        found = _finished(spans, 2)
    request, call = _one(found, SpanKind.SERVER), _one(found, SpanKind.CLIENT)
    assert f"{request.context.trace_id:032x}" == CLIENT_TRACE and call.parent.span_id == request.context.span_id
    assert request.attributes["sinkwatch.verdict"] == "unmonitored"
    assert upstream.stats.traceparents == [f"00-{CLIENT_TRACE}-{call.context.span_id:016x}-01"]
    assert request.attributes["gen_ai.usage.output_tokens"] == 4


@pytest.mark.model
def test_a_rescued_generation_has_a_span_per_gate_attempt_and_its_verdict(spans, gateway):
    body = {"model": MODEL, **LOOP, "sinkwatch": {"policy": "rescue"}}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200
    gate = response.json()["stability"]["gate"]
    found = _finished(spans, 1 + len(gate["attempts"]))
    request = _one(found, SpanKind.SERVER)
    attempts = sorted((s for s in found if s.name == "sinkwatch.gate.attempt"), key=lambda s: s.start_time)
    assert len(attempts) == len(gate["attempts"]) >= 2
    assert all(attempt.parent.span_id == request.context.span_id for attempt in attempts)
    assert attempts[0].attributes["sinkwatch.attempt.verdict"] == gate["attempts"][0]["verdict"]
    assert attempts[0].attributes["sinkwatch.attempt.fired_at_token"] == gate["attempts"][0]["fired_at_token"]
    assert attempts[1].attributes["sinkwatch.attempt.strategy"] == "ngram_bias"
    assert request.name == f"chat {MODEL}"
    assert request.attributes["sinkwatch.gate.action"] == "rescue"
    assert request.attributes["sinkwatch.gate.outcome"] == "rescued"
    assert request.attributes["sinkwatch.verdict"] == gate["detected"]
    assert request.attributes["sinkwatch.verdict.reasons"]
    assert request.attributes["sinkwatch.policy"] == "rescue"


def test_a_request_for_two_choices_is_one_span_with_every_finish_and_the_worst_choices_gate(spans):
    settings = Settings().replace(port=free_port(), served_model_name=SCRIPTED_MODEL)
    app = create_app(settings, backend=one_looping_choice(), calibration=CALIBRATION)
    body = {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "n": 2}
    with RunningServer(app, settings.port) as server:
        response = httpx.post(
            f"{server.base_url}/v1/chat/completions", json={**body, "sinkwatch": {"policy": "block"}}, timeout=30
        )
    assert response.status_code == 200
    found = _finished(spans, 3)
    request = _one(found, SpanKind.SERVER)
    attempts = [span for span in found if span.name == "sinkwatch.gate.attempt"]
    assert len(attempts) == 2 and all(a.parent.span_id == request.context.span_id for a in attempts)
    assert tuple(request.attributes["gen_ai.response.finish_reasons"]) == ("length", "content_filter")
    assert request.attributes["gen_ai.usage.output_tokens"] == 40 + 10
    assert (request.attributes["sinkwatch.verdict"], request.attributes["sinkwatch.gate.action"]) == ("sink", "block")
