"""``/v1/responses`` under block and rescue on the ``vllm`` backend: the events held back, a collapsing response
cut at the stable point and ended ``incomplete``. Against the fake vLLM (which pushes each token's features
before its event, as the plugin does), with the official client where it parses the answer."""

import json

import httpx
import pytest

from tests.backends.fake_vllm import MODEL
from tests.conftest import RunningServer, metric
from tests.relay.conftest import client_of, relay_gateway

LOOP_FROM = 8
TOKENS = 40
DELTAS = ("response.output_text.delta", "response.reasoning_text.delta", "response.function_call_arguments.delta")


def _events(server: RunningServer, body: dict, **headers) -> list[dict]:
    url = f"{server.base_url}/v1/responses"
    with httpx.stream("POST", url, json={**body, "stream": True}, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    return [json.loads(line.removeprefix("data: ")) for line in lines]


def _sent_text(events: list[dict]) -> str:
    return "".join(event["delta"] for event in events if event["type"] in DELTAS)


def _output_text(response: dict) -> str:
    texts = []
    for item in response["output"]:
        texts += [part["text"] for part in item.get("content") or []]
        texts.append(item.get("arguments") or "")
    return "".join(texts)


@pytest.mark.parametrize("kind", ["content", "reasoning", "tool_calls"])
def test_block_cuts_a_looping_response_at_the_stable_point_and_ends_it_incomplete(fake, relay_server, kind):
    upstream, _ = fake
    upstream.config.kind, upstream.config.loop_from = kind, LOOP_FROM
    events = _events(relay_server, {"model": MODEL, "input": "hi"}, **{"x-sinkwatch-policy": "block"})
    sent = _sent_text(events)
    assert " t0" in sent  # what the detector vouched for went out
    assert not any(f" t{i} " in sent + " " for i in range(LOOP_FROM, TOKENS))
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert [event["sequence_number"] for event in events] == sorted({event["sequence_number"] for event in events})
    response = final["response"]
    assert (response["status"], response["incomplete_details"]) == ("incomplete", {"reason": "content_filter"})
    assert _output_text(response) == sent  # the response object holds what the client got, no more
    report = response["stability"]
    assert (report["verdict"], report["gate"]["action"], report["gate"]["outcome"]) == ("sink", "block", "blocked")
    assert report["gate"]["tokens_leaked"] == 0 and report["gate"]["tokens_withheld"] > 0
    assert kind in report["covered"]
    assert upstream.bodies[-1]["stream"] is True


def test_a_whole_response_under_block_is_cut_at_the_same_point(fake, relay_server):
    upstream, _ = fake
    upstream.config.loop_from = LOOP_FROM
    streamed = _events(relay_server, {"model": MODEL, "input": "hi"}, **{"x-sinkwatch-policy": "block"})
    upstream.bodies.clear()
    answer = client_of(relay_server).responses.create(
        model=MODEL, input="hi", extra_body={"sinkwatch": {"policy": "block"}}
    )
    assert upstream.bodies[-1]["stream"] is True  # asked as a stream upstream, to be cut like one
    assert (answer.status, answer.incomplete_details.reason) == ("incomplete", "content_filter")
    assert answer.output_text == _sent_text(streamed)
    assert answer.model_extra["stability"]["gate"]["outcome"] == "blocked"


def test_a_response_that_holds_goes_out_whole_with_its_report(relay_server):
    events = _events(relay_server, {"model": MODEL, "input": "hi"}, **{"x-sinkwatch-policy": "block"})
    assert [e["sequence_number"] for e in events] == list(range(len(events)))  # every event, in order
    assert _sent_text(events) == "".join(f" t{i}" for i in range(TOKENS))
    final = events[-1]
    assert final["type"] == "response.completed"
    report = final["response"]["stability"]
    assert (report["verdict"], report["gate"]["action"], report["tokens_monitored"]) == ("ok", "pass", TOKENS)
    answer = client_of(relay_server).responses.create(
        model=MODEL, input="hi", extra_body={"sinkwatch": {"policy": "block"}}
    )
    assert answer.status == "completed" and answer.output_text == _sent_text(events)


def test_rescue_falls_back_to_block_and_says_why(fake, relay_server):
    upstream, _ = fake
    upstream.config.loop_from = LOOP_FROM
    before = metric(relay_server.base_url, "sinkwatch_rescues_total", outcome="fallback_block")
    events = _events(relay_server, {"model": MODEL, "input": "hi", "sinkwatch": {"policy": "rescue"}})
    gate = events[-1]["response"]["stability"]["gate"]
    assert (gate["action"], gate["outcome"]) == ("block", "rescue_failed")
    assert "not available on /v1/responses" in gate["note"]
    assert len(upstream.bodies) == 1  # nothing resampled
    assert metric(relay_server.base_url, "sinkwatch_rescues_total", outcome="fallback_block") == before + 1


def test_block_mode_error_ends_the_stream_with_an_error_event(fake):
    upstream, server = fake
    upstream.config.loop_from = LOOP_FROM
    with relay_gateway(server, block_mode="error") as gateway:
        gateway.wait_ready(timeout=30)
        events = _events(gateway, {"model": MODEL, "input": "hi"}, **{"x-sinkwatch-policy": "block"})
    assert events[-1]["error"]["code"] == "sinkwatch_blocked"
    assert not any(f" t{i} " in _sent_text(events[:-1]) + " " for i in range(LOOP_FROM, TOKENS))
