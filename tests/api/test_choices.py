"""``n > 1`` on the embedded engine: independent choices, each monitored and gated on its own."""

import json
from collections import defaultdict

import httpx
import pytest

from tests.conftest import MODEL, metric, wait_for

HELLO = [{"role": "user", "content": "Name three colors."}]
STORY = [{"role": "user", "content": "Write a story about a cat."}]
BLOCK = {"sinkwatch": {"policy": "block"}}


def _stability(item) -> dict:
    return item.model_extra["stability"]


def test_two_greedy_choices_are_identical_each_with_its_report(client):
    single = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    response = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0, n=2)
    assert [choice.index for choice in response.choices] == [0, 1]
    assert {choice.message.content for choice in response.choices} == {single.choices[0].message.content}
    reports = [_stability(choice) for choice in response.choices]
    assert [report["tokens_monitored"] for report in reports] == [8, 8]
    assert _stability(response)["choice"] in (0, 1)
    assert "choice" not in _stability(single) and "stability" not in single.choices[0].model_extra
    assert response.usage.prompt_tokens == single.usage.prompt_tokens
    assert response.usage.completion_tokens == 2 * single.usage.completion_tokens
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_seeded_choices_differ_and_each_reproduces_its_seed(client):
    options = {"model": MODEL, "messages": HELLO, "max_tokens": 12, "temperature": 1.0}
    pair = client.chat.completions.create(**options, seed=11, n=2)
    texts = [choice.message.content for choice in pair.choices]
    assert texts[0] != texts[1]
    alone = [client.chat.completions.create(**options, seed=seed).choices[0].message.content for seed in (11, 12)]
    assert texts == alone  # choice i samples with seed + i, as vLLM does


def test_three_streamed_choices_interleave_by_index(client):
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, temperature=0, n=3)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=10, temperature=0, n=3, stream=True, logprobs=True
        )
    )
    texts, roles, finishes, tokens = defaultdict(str), defaultdict(int), {}, defaultdict(int)
    for chunk in chunks:
        assert len(chunk.choices) == 1
        choice = chunk.choices[0]
        roles[choice.index] += choice.delta.role == "assistant"
        texts[choice.index] += choice.delta.content or ""
        tokens[choice.index] += len(choice.logprobs.content) if choice.logprobs else 0
        if choice.finish_reason:
            finishes[choice.index] = choice.model_extra["stability"]["tokens_monitored"]
    assert dict(roles) == {0: 1, 1: 1, 2: 1}
    assert dict(texts) == {i: c.message.content for i, c in enumerate(whole.choices)}
    assert dict(finishes) == dict(tokens) == {0: 10, 1: 10, 2: 10}
    assert _stability(chunks[-1])["choice"] in (0, 1, 2)
    assert all("stability" not in chunk.model_extra for chunk in chunks[:-1])


def test_streamed_usage_counts_every_choice_once_per_prompt(client):
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Once upon a time",
            max_tokens=5,
            temperature=0,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == 10
    assert _stability(usage_chunk)["choice"] in (0, 1)
    assert sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason) == [0, 1]


# Two sampled choices under block, driven toward repetition (a negative frequency penalty loops SmolLM2).
MIXED_BLOCK = {
    "model": MODEL,
    "messages": STORY,
    "max_tokens": 64,
    "temperature": 1.0,
    "frequency_penalty": -1.0,
    "n": 2,
    "extra_body": BLOCK,
}


def _mixed_block(client, **options):
    """A seeded n=2 request under ``block`` in which one choice loops (a negative frequency penalty drives
    SmolLM2 into repetition) and the other does not; a few seeds are tried, as sampling decides which."""
    for seed in range(12):
        response = client.chat.completions.create(**MIXED_BLOCK, seed=seed, **options)
        reasons = [choice.finish_reason for choice in response.choices]
        if sorted(reasons) == ["content_filter", "length"]:
            return seed, response
    pytest.fail("no seed gave one looping and one clean choice")


def test_under_block_only_the_looping_choice_is_blocked(client):
    seed, response = _mixed_block(client)
    blocked = next(c for c in response.choices if c.finish_reason == "content_filter")
    clean = next(c for c in response.choices if c.finish_reason == "length")
    blocked_report, clean_report = _stability(blocked), _stability(clean)
    assert blocked_report["verdict"] in {"sink", "rank_exhaustion"}
    assert blocked_report["gate"]["action"] == "block" and blocked_report["gate"]["tokens_leaked"] == 0
    assert blocked_report["gate"]["tokens_withheld"] > 0
    assert clean_report["gate"]["action"] == "pass"
    assert _stability(response)["choice"] == blocked.index
    assert _stability(response)["gate"]["action"] == "block"
    # streamed, each choice has its own hold-back: the clean one streams the whole answer's text, and the
    # blocked one streams its answer up to the cut, plus only what its report counts as leaked (released
    # before the verdict moved the cut back; zero while the hold-back covers the detector)
    chunks = list(client.chat.completions.create(**MIXED_BLOCK, seed=seed, stream=True, logprobs=True))
    texts, tokens, gates = defaultdict(str), defaultdict(int), {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            tokens[choice.index] += len(choice.logprobs.content) if choice.logprobs else 0
            if choice.finish_reason:
                gates[choice.index] = choice.model_extra["stability"]["gate"]
    assert texts[clean.index] == clean.message.content
    assert gates[clean.index]["action"] == "pass"
    streamed = gates[blocked.index]
    assert streamed["action"] == "block" and texts[blocked.index].startswith(blocked.message.content)
    assert tokens[blocked.index] == streamed["attempts"][0]["tokens_kept"]
    assert tokens[blocked.index] - streamed["tokens_leaked"] == blocked_report["gate"]["attempts"][0]["tokens_kept"]


def test_a_client_leaving_a_stream_of_choices_frees_every_sequence(gateway):
    body = {"model": MODEL, "messages": STORY, "max_tokens": 400, "n": 3, "stream": True}
    texts = 0
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line.removeprefix("data: "))["choices"][0]["delta"].get(
                "content"
            ):
                texts += 1
                if texts == 6:
                    break
    assert texts == 6
    wait_for(lambda: metric(gateway.base_url, "sinkwatch_engine_active_requests") == 0, timeout=30)


def test_more_choices_than_the_queue_holds_is_400_naming_n(gateway, gateway_settings):
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 2, "n": gateway_settings.max_queue + 1}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert response.json()["error"]["code"] == "unsupported_parameter"
