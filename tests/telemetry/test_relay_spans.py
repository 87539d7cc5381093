"""Gate attempts on the relay path (``vllm`` backend, fake vLLM) are spans as on the embedded path: one per
attempt of each choice, children of the request's span, with the attempt's report as attributes."""

import json
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.trace import SpanKind

from tests.backends.fake_vllm import MODEL, FakeVLLM
from tests.conftest import RunningServer, free_port, wait_for
from tests.gate.scripted import CALIBRATION
from tests.relay.conftest import relay_gateway

LOOP_FROM = 8


@pytest.fixture
def looping() -> Iterator[tuple[FakeVLLM, RunningServer]]:
    """A gateway in front of a fake vLLM whose first answer's choice 0 loops from its ninth token."""
    fake = FakeVLLM(CALIBRATION)
    fake.config.tokens, fake.config.loop_from = 40, LOOP_FROM
    with RunningServer(fake.app, free_port()) as upstream, relay_gateway(upstream) as gateway:
        gateway.wait_ready(timeout=30)
        yield fake, gateway
    fake.close()


def _attempts(spans, count: int) -> tuple[object, list]:
    """The request's span and its attempt spans, once ``count`` spans have ended."""
    wait_for(lambda: len(spans.get_finished_spans()) >= count)
    found = list(spans.get_finished_spans())
    (request,) = [span for span in found if span.kind is SpanKind.SERVER]
    attempts = sorted((s for s in found if s.name == "sinkwatch.gate.attempt"), key=lambda s: s.start_time)
    assert all(attempt.parent.span_id == request.context.span_id for attempt in attempts)
    return request, attempts


def test_a_rescued_choice_has_a_span_per_attempt_beside_the_choice_that_held(spans, looping):
    _, gateway = looping
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 40,
        "n": 2,
        "stream": True,
        "sinkwatch": {"policy": "rescue"},
    }
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    reports = {}
    for line in lines:
        for choice in json.loads(line.removeprefix("data: ")).get("choices", []):
            if choice.get("stability"):
                reports[choice["index"]] = choice["stability"]["gate"]
    request, attempts = _attempts(spans, 1 + 3 + 2)  # the request, its upstream calls, three attempts
    by_choice = {index: [a for a in attempts if a.attributes["sinkwatch.attempt.choice"] == index] for index in (0, 1)}
    assert [len(by_choice[0]), len(by_choice[1])] == [2, 1]
    first, rescue = by_choice[0]
    assert first.attributes["sinkwatch.attempt.verdict"] == reports[0]["attempts"][0]["verdict"] == "sink"
    assert first.attributes["sinkwatch.attempt.fired_at_token"] == reports[0]["attempts"][0]["fired_at_token"]
    assert rescue.attributes["sinkwatch.attempt.strategy"] == "ngram_bias"
    cut = reports[0]["attempts"][0]["rollback_to_token"]  # continued from there
    assert rescue.attributes["sinkwatch.attempt.tokens_kept"] == reports[0]["attempts"][1]["tokens_kept"] == 40 - cut
    assert "sinkwatch.attempt.fired_at_token" not in by_choice[1][0].attributes
    assert request.attributes["sinkwatch.gate.action"] == "rescue"


def test_a_blocked_response_has_its_attempt_span(spans, looping):
    _, gateway = looping
    body = {"model": MODEL, "input": "hi", "sinkwatch": {"policy": "block"}}
    report = httpx.post(f"{gateway.base_url}/v1/responses", json=body, timeout=30).json()["stability"]
    _, attempts = _attempts(spans, 3)
    (attempt,) = attempts
    assert attempt.attributes["sinkwatch.attempt.fired_at_token"] == report["gate"]["attempts"][0]["fired_at_token"]
    assert attempt.attributes["sinkwatch.attempt.tokens_kept"] == report["gate"]["attempts"][0]["tokens_kept"]
    assert "sinkwatch.attempt.choice" not in attempt.attributes
