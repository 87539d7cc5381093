"""Relay, then annotate, on the ``openai`` backend with a reader: reasoning and tool-call deltas from a fake
upstream are relayed as sent and read by the real local model; what it cannot read is marked unmonitored."""

import json
from collections.abc import Iterator

import httpx
import pytest

from gateway.config import Settings
from monitors.calibration import load_calibration
from tests.backends.fake_vllm import MODEL, FakeVLLM
from tests.conftest import RunningServer, free_port, metric, start_gateway
from tests.relay.conftest import client_of

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeVLLM, RunningServer]]:
    fake = FakeVLLM(load_calibration(MODEL))
    fake.config.tokens = 12
    with RunningServer(fake.app, free_port()) as server:
        yield fake, server
    fake.close()


@pytest.fixture(scope="module")
def reader_gateway(upstream) -> Iterator[RunningServer]:
    """A gateway with the ``openai`` backend and the reader, reading at most two streams."""
    _, server = upstream
    settings = Settings().replace(
        backend="openai",
        upstreams=f"{server.base_url}/v1",
        reader=True,
        reader_max_streams=2,
        port=free_port(),
    )
    with start_gateway(settings) as gateway:
        gateway.wait_ready(timeout=120)
        yield gateway


def _stream(server: RunningServer, body: dict) -> list[dict]:
    url = f"{server.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_reasoning_and_content_are_relayed_as_sent_and_both_read(upstream, reader_gateway):
    fake, _ = upstream
    fake.config.kind = "reasoning"
    chunks = _stream(reader_gateway, {"model": MODEL, "messages": MESSAGES, "max_tokens": 12})
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert (reasoning, content) == ("".join(f" t{i}" for i in range(6)), "".join(f" t{i}" for i in range(6, 12)))
    covered = chunks[-1]["stability"]["covered"]
    assert covered["reasoning"] > 0 and covered["content"] > 0
    assert sum(covered.values()) == chunks[-1]["stability"]["tokens_monitored"]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_arguments_are_read(upstream, reader_gateway, stream):
    fake, _ = upstream
    fake.config.kind = "tool_calls"
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 12,
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    if stream:
        report = _stream(reader_gateway, body)[-1]["stability"]
    else:
        answer = client_of(reader_gateway).chat.completions.create(**body)
        assert answer.choices[0].message.tool_calls[0].function.arguments == "".join(f" t{i}" for i in range(12))
        report = answer.model_extra["stability"]
    assert set(report["covered"]) == {"tool_calls"} and report["tokens_monitored"] > 0


@pytest.fixture
def looping(upstream) -> Iterator[FakeVLLM]:
    """The fake answering 60 tokens of content whose text loops from the ninth on."""
    fake, _ = upstream
    config = fake.config
    config.kind, config.tokens, config.loop_from, config.loop_text, config.loop_requests = "content", 60, 8, True, 10**6
    yield fake
    config.tokens, config.loop_from, config.loop_text, config.loop_requests = 12, None, False, 1


def test_a_blocked_whole_answer_is_cut_where_the_stream_is(looping, reader_gateway):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 60, "sinkwatch": {"policy": "block"}}
    chunks = _stream(reader_gateway, body)
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert chunks[-1]["stability"]["gate"]["action"] == "block"
    whole = httpx.post(f"{reader_gateway.base_url}/v1/chat/completions", json=body, timeout=60).json()
    choice, attempt = whole["choices"][0], whole["stability"]["gate"]["attempts"][0]
    assert choice["finish_reason"] == "content_filter"
    # Cut at the same stable point; a stream sends an upstream chunk only once the reader has read all of
    # it, so it may stop a few chunks earlier than the whole answer, which is cut within the text.
    content = choice["message"]["content"]
    assert content.startswith(streamed) and streamed.startswith(" t0")
    assert content.count(" t8 t9 t10") <= 1 < "".join(f" t{8 + i % 3}" for i in range(52)).count(" t8 t9 t10")
    assert attempt["tokens_kept"] == attempt["rollback_to_token"] < attempt["tokens_generated"]


def test_each_choice_is_read_with_its_own_report(upstream, reader_gateway):
    fake, _ = upstream
    fake.config.kind = "content"
    answer = httpx.post(
        f"{reader_gateway.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 12, "n": 2},
        timeout=60,
    ).json()
    assert [choice["stability"]["tokens_monitored"] > 0 for choice in answer["choices"]] == [True, True]
    assert answer["stability"]["choice"] in (0, 1)


def test_a_request_beyond_the_readers_capacity_is_relayed_unmonitored_and_counted(upstream, reader_gateway):
    fake, _ = upstream
    fake.config.kind = "content"
    before = metric(reader_gateway.base_url, "sinkwatch_unmonitored_requests_total", reason="capacity")
    response = httpx.post(
        f"{reader_gateway.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "n": 3},
        timeout=60,
    )
    assert response.status_code == 200 and response.headers["x-sinkwatch-verdict"] == "unmonitored"
    assert len(response.json()["choices"]) == 3
    assert response.json()["stability"] == {
        **response.json()["stability"],
        "verdict": "unmonitored",
        "reason": "capacity",
    }
    assert metric(reader_gateway.base_url, "sinkwatch_unmonitored_requests_total", reason="capacity") == before + 1


def test_responses_have_no_monitored_path_here_and_say_so(reader_gateway):
    response = httpx.post(f"{reader_gateway.base_url}/v1/responses", json={"model": MODEL, "input": "hi"})
    assert response.headers["x-sinkwatch-verdict"] == "unmonitored"
    assert response.json()["stability"]["reason"] == "endpoint"
