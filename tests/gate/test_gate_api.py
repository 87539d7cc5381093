"""The gate over HTTP with a scripted backend and the real detector: responses, streams, errors, metrics."""

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.config import Settings
from tests.conftest import RunningServer, free_port
from tests.gate.scripted import CALIBRATION, MODEL, ScriptedBackend, loop_after, token_text

LOOP_START = 10
KEPT = "".join(token_text(0, i) for i in range(LOOP_START))
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}


def _serve(backend: ScriptedBackend, **settings) -> RunningServer:
    configured = Settings().replace(port=free_port(), served_model_name=MODEL, **settings)
    return RunningServer(create_app(configured, backend=backend, calibration=CALIBRATION), configured.port)


@pytest.fixture
def looping() -> Iterator[tuple[RunningServer, ScriptedBackend]]:
    ids, entropy = loop_after(LOOP_START)
    backend = ScriptedBackend([40, 30], ids=ids, entropy=entropy)
    with _serve(backend) as server:
        yield server, backend


def _client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)


def _stream_lines(server: RunningServer, body: dict, **headers) -> list[str]:
    url = f"{server.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json={**body, "stream": True}, headers=headers, timeout=30) as response:
        return [line for line in response.iter_lines() if line]


def _metric(server: RunningServer, name: str, **labels) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    wanted = set(labels.items())
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and wanted <= set(sample.labels.items())
    )


def test_block_answers_the_stable_prefix_with_content_filter_and_the_report(looping):
    server, _ = looping
    response = _client(server).chat.completions.create(**BODY, extra_body={"sinkwatch": {"policy": "block"}})
    stability = response.model_extra["stability"]
    assert response.choices[0].message.content == KEPT
    assert response.choices[0].finish_reason == "content_filter"
    assert (stability["verdict"], stability["policy"], stability["gate"]["action"]) == ("sink", "block", "block")
    assert response.usage.completion_tokens == LOOP_START


def test_the_raw_stream_ends_with_the_report_then_done_and_holds_no_blocked_token(looping):
    server, _ = looping
    lines = _stream_lines(server, BODY, **{"x-sinkwatch-policy": "block"})
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == KEPT
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert chunks[-1]["stability"]["gate"]["tokens_leaked"] == 0
    assert not any(token_text(0, i) in line for line in lines for i in range(LOOP_START, 40))


def test_rescue_continues_from_the_stable_prefix(looping):
    server, backend = looping
    response = _client(server).chat.completions.create(**BODY, extra_body={"sinkwatch": {"policy": "rescue"}})
    gate = response.model_extra["stability"]["gate"]
    assert response.choices[0].message.content == KEPT + "".join(token_text(1, i) for i in range(30))
    assert (gate["action"], gate["outcome"]) == ("rescue", "rescued")
    assert backend.requests[1].continuation == KEPT
    assert _metric(server, "sinkwatch_rescues_total", model=MODEL, outcome="success") >= 1
    assert _metric(server, "sinkwatch_rescue_attempts_total", model=MODEL, outcome="success") >= 1
    assert _metric(server, "sinkwatch_tokens_discarded_total", model=MODEL) >= gate["tokens_discarded"] > 0


def test_a_rescue_that_loops_again_falls_back_to_block():
    ids, entropy = loop_after(LOOP_START, rescues_loop=True)
    with _serve(ScriptedBackend([40], ids=ids, entropy=entropy), rescue_attempts=1) as server:
        response = _client(server).chat.completions.create(**BODY, extra_body={"sinkwatch": {"policy": "rescue"}})
        gate = response.model_extra["stability"]["gate"]
        assert response.choices[0].finish_reason == "content_filter"
        assert (gate["action"], gate["outcome"], len(gate["attempts"])) == ("block", "rescue_failed", 2)
        assert response.choices[0].message.content == KEPT + "".join(token_text(1, i) for i in range(LOOP_START))
        assert _metric(server, "sinkwatch_rescues_total", model=MODEL, outcome="fallback_block") >= 1
        assert _metric(server, "sinkwatch_rescue_attempts_total", model=MODEL, outcome="failed") >= 1


def test_gate_actions_are_counted_by_policy_action_and_reason(looping):
    server, _ = looping
    labels = {"model": MODEL, "policy": "block", "action": "block", "reason": "sink"}
    before = _metric(server, "sinkwatch_gate_actions_total", **labels)
    withheld = _metric(server, "sinkwatch_tokens_withheld_total", model=MODEL)
    _client(server).chat.completions.create(**BODY, extra_body={"sinkwatch": {"policy": "block"}})
    assert _metric(server, "sinkwatch_gate_actions_total", **labels) == before + 1
    assert _metric(server, "sinkwatch_tokens_withheld_total", model=MODEL) > withheld


def test_whole_responses_carry_the_verdict_and_action_headers(looping):
    server, _ = looping
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={**BODY, "sinkwatch": {"policy": "block"}})
    assert (response.headers["x-sinkwatch-verdict"], response.headers["x-sinkwatch-action"]) == ("sink", "block")


def test_an_unknown_policy_in_the_body_is_a_400():
    with _serve(ScriptedBackend([5])) as server:
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json={**BODY, "sinkwatch": {"policy": "x"}})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "sinkwatch.policy"


def test_error_mode_answers_an_openai_error_instead():
    ids, entropy = loop_after(LOOP_START)
    with _serve(ScriptedBackend([40], ids=ids, entropy=entropy), policy="block", block_mode="error") as server:
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            _client(server).chat.completions.create(**BODY)
        assert refused.value.body["code"] == "sinkwatch_blocked"
        lines = _stream_lines(server, BODY)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2].removeprefix("data: "))["error"]["code"] == "sinkwatch_blocked"
    assert all(token_text(0, i) not in "".join(lines) for i in range(LOOP_START, 40))


def test_overrides_are_ignored_when_the_operator_forbids_them():
    ids, entropy = loop_after(LOOP_START)
    backend = ScriptedBackend([40], ids=ids, entropy=entropy)
    with _serve(backend, policy="block", allow_policy_override=False) as server:
        response = _client(server).chat.completions.create(**BODY, extra_body={"sinkwatch": {"policy": "observe"}})
    assert response.choices[0].finish_reason == "content_filter"
