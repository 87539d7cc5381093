"""The gateway as a drop-in OpenAI endpoint, exercised with the official client against the real model."""

import json

import httpx
import openai
import pytest

from tests.conftest import MODEL

HELLO = [{"role": "user", "content": "Name three colors."}]


def test_chat_completion_answers_with_usage_and_stability(client):
    response = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    stability = response.model_extra["stability"]
    assert stability["verdict"] in {"ok", "warn", "sink", "rank_exhaustion"}
    assert stability["tokens_monitored"] == response.usage.completion_tokens
    assert set(stability["bands"]) == {"early", "middle", "late"}


def test_verdict_header_matches_report(client):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=8)
    assert raw.headers["x-sinkwatch-verdict"] == raw.parse().model_extra["stability"]["verdict"]


def test_max_tokens_ends_with_length(client):
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story."}], max_completion_tokens=5
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 5


def test_greedy_is_deterministic_and_seed_reproduces_sampling(client):
    greedy = [
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, temperature=0)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert greedy[0] == greedy[1]
    seeded = [
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, temperature=1.0, seed=7)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


def test_stop_string_is_not_included(client):
    response = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=20, temperature=0, stop=[" 8"]
    )
    assert response.choices[0].finish_reason == "stop"
    assert "8" not in response.choices[0].text


def test_streaming_chat_frames_like_openai(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=10, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert chunks[-1].model_extra["stability"]["tokens_monitored"] == chunks[-1].usage.completion_tokens
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text


def test_raw_sse_ends_with_stability_then_done(gateway):
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 6, "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] in {"stop", "length"}
    assert "stability" in last
    assert all("stability" not in json.loads(e.removeprefix("data: ")) for e in events[:-2])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("endpoint", "prompt"), [("chat/completions", {"messages": HELLO}), ("completions", {"prompt": "Hi"})]
)
def test_no_null_where_openais_schema_wants_a_string(gateway, endpoint, prompt, stream):
    """Issue 19: ``system_fingerprint: null`` violated OpenAI's response schema (a string when present)."""
    body = {"model": MODEL, **prompt, "max_tokens": 3, "stream": stream}
    with httpx.stream("POST", f"{gateway.base_url}/v1/{endpoint}", json=body, timeout=60) as response:
        payloads = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    objects = [json.loads(p) for p in payloads if p != "[DONE]"]
    assert objects and all("system_fingerprint" not in o for o in objects)


def test_legacy_completion_whole_and_streamed(client):
    whole = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert whole.object == "text_completion"
    assert whole.choices[0].text
    streamed = list(
        client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text


def test_models_list_and_retrieve(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_unknown_model_is_404_in_openai_format(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=HELLO)
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"wat": 1}, "wat"),
    ],
)
def test_bad_parameters_get_400_with_param(gateway, extra, param):
    body = {"model": MODEL, "messages": HELLO, **extra}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_malformed_json_is_400(gateway):
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_missing_messages_names_the_param(gateway):
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json={"model": MODEL})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


def test_unknown_route_is_openai_404(gateway):
    response = httpx.get(f"{gateway.base_url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
