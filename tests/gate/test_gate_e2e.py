"""The gate end to end, with the official client and the real model: a forced loop is blocked or
rescued, normal answers pass untouched under every policy, and blocked text never reaches the stream."""

import json

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from gateway.engine.provision import DEFAULT_MODEL, provision
from gateway.gate.holdback import required_lag
from monitors.calibration import load_calibration
from monitors.text import text_sink_onset
from tests.conftest import MODEL

# Greedy decoding with a repetition penalty below 1 drives this prompt into a loop the detector fires on
# within ~40 tokens (checked by the first test, so a change of model or detector shows up there).
LOOP = {
    "messages": [{"role": "user", "content": "Tell me about the ocean."}],
    "max_tokens": 64,
    "temperature": 0,
    "repetition_penalty": 0.8,
}
CALM = {"messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 24, "temperature": 0}
COLLAPSE = {"sink", "rank_exhaustion"}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(provision(DEFAULT_MODEL))


def _is_text_sink(tokenizer, text: str) -> bool:
    return text_sink_onset(tokenizer.encode(text, add_special_tokens=False)) is not None


def _create(client, call: dict, policy: str, **extra):
    """A chat completion through the official client, with the sinkwatch extension in ``extra_body``."""
    body = {k: v for k, v in call.items() if k in ("messages", "max_tokens", "temperature")}
    extra_body = {"sinkwatch": {"policy": policy}}
    if "repetition_penalty" in call:
        extra_body["repetition_penalty"] = call["repetition_penalty"]
    return client.chat.completions.create(model=MODEL, extra_body=extra_body, **body, **extra)


def _sse(gateway, body: dict) -> tuple[str, dict]:
    """The raw stream: the concatenated content of every chunk, and the last chunk."""
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return streamed, chunks[-1]


def test_the_forced_loop_is_a_loop_the_detector_fires_on(client, tokenizer):
    response = _create(client, LOOP, "annotate")
    assert _is_text_sink(tokenizer, response.choices[0].message.content)
    assert response.model_extra["stability"]["verdict"] in COLLAPSE
    assert response.model_extra["stability"]["gate"]["action"] == "annotate"


def test_block_stops_the_loop_with_content_filter(client, tokenizer):
    response = _create(client, LOOP, "block")
    choice, stability = response.choices[0], response.model_extra["stability"]
    gate = stability["gate"]
    assert choice.finish_reason == "content_filter"
    assert (gate["action"], gate["outcome"], gate["detected"]) == ("block", "blocked", stability["verdict"])
    assert stability["verdict"] in COLLAPSE
    assert gate["tokens_withheld"] > 0
    assert response.usage.completion_tokens == gate["attempts"][0]["rollback_to_token"]
    assert not _is_text_sink(tokenizer, choice.message.content)


def test_rescue_returns_an_answer_without_the_loop(client, tokenizer):
    response = _create(client, LOOP, "rescue")
    choice, stability = response.choices[0], response.model_extra["stability"]
    gate = stability["gate"]
    assert (gate["action"], gate["outcome"]) == ("rescue", "rescued"), gate
    assert gate["attempts"][0]["verdict"] in COLLAPSE and gate["attempts"][-1]["strategy"] == "ngram_bias"
    assert stability["verdict"] not in COLLAPSE
    assert choice.finish_reason in {"stop", "length"}
    assert not _is_text_sink(tokenizer, choice.message.content)
    assert response.usage.completion_tokens == sum(a["tokens_kept"] for a in gate["attempts"])
    assert gate["tokens_discarded"] > 0


@pytest.mark.parametrize("stream", [False, True])
def test_calm_answers_are_byte_identical_under_every_policy(client, stream):
    texts, verdicts = {}, set()
    for policy in ("observe", "annotate", "block", "rescue"):
        if stream:
            chunks = list(_create(client, CALM, policy, stream=True))
            texts[policy] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            report = chunks[-1].model_extra.get("stability")
        else:
            response = _create(client, CALM, policy)
            texts[policy], report = response.choices[0].message.content, response.model_extra.get("stability")
        if report is not None:
            verdicts.add(report["verdict"])
            assert report["gate"]["outcome"] is None
    assert not verdicts & COLLAPSE
    assert len(set(texts.values())) == 1, texts


def test_no_blocked_token_ever_appears_in_the_stream(gateway, client):
    full = _create(client, LOOP, "annotate").choices[0].message.content
    whole = _create(client, LOOP, "block").choices[0].message.content
    body = {"model": MODEL, **LOOP, "sinkwatch": {"policy": "block"}, "stream": True}
    streamed, last = _sse(gateway, body)
    gate = last["stability"]["gate"]
    assert last["choices"][0]["finish_reason"] == "content_filter"
    assert gate["holdback_tokens"] == required_lag(load_calibration(MODEL))
    assert gate["tokens_leaked"] == 0
    # Without streaming nothing is sent before the end, so the cut falls exactly where the detector put
    # it; the stream must stop at the same place, before the blocked tokens of the same generation.
    assert streamed == whole
    assert full.startswith(streamed) and len(full) > len(streamed)


def test_a_streamed_rescue_sends_exactly_the_rescued_answer(gateway, client):
    seeded = {**LOOP, "seed": 7}
    whole = _create(client, seeded, "rescue", seed=7)
    streamed, last = _sse(gateway, {"model": MODEL, **seeded, "sinkwatch": {"policy": "rescue"}, "stream": True})
    gate = last["stability"]["gate"]
    assert (gate["outcome"], gate["tokens_leaked"]) == ("rescued", 0)
    assert streamed == whole.choices[0].message.content


def test_the_policy_header_picks_the_policy_and_a_bad_one_is_a_400(gateway):
    body = {"model": MODEL, **LOOP}
    url = f"{gateway.base_url}/v1/chat/completions"
    blocked = httpx.post(url, json=body, headers={"x-sinkwatch-policy": "block"}, timeout=120)
    assert blocked.json()["choices"][0]["finish_reason"] == "content_filter"
    bad = httpx.post(url, json=body, headers={"x-sinkwatch-policy": "panic"}, timeout=30)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "x-sinkwatch-policy"


# Greedy decoding with a negative frequency penalty loops on this prompt ("the water the water ..."): the
# loop whose rescue used to keep the client's penalty and loop again.
FREQUENCY_LOOP = {
    "messages": [{"role": "user", "content": "Explain how rain forms."}],
    "max_tokens": 128,
    "temperature": 0,
    "frequency_penalty": -1.0,
}


def test_rescue_neutralises_a_negative_frequency_penalty_and_says_so(client, tokenizer):
    annotated = client.chat.completions.create(
        model=MODEL, extra_body={"sinkwatch": {"policy": "annotate"}}, **FREQUENCY_LOOP
    )
    assert annotated.model_extra["stability"]["verdict"] in COLLAPSE
    response = client.chat.completions.create(
        model=MODEL, extra_body={"sinkwatch": {"policy": "rescue"}}, **FREQUENCY_LOOP
    )
    gate = response.model_extra["stability"]["gate"]
    assert (gate["action"], gate["outcome"]) == ("rescue", "rescued"), gate
    assert gate["attempts"][0]["neutralised"] == []
    assert "frequency_penalty" in gate["attempts"][1]["neutralised"]
    assert not _is_text_sink(tokenizer, response.choices[0].message.content)


def test_block_at_is_a_probability_and_the_report_carries_risk(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, extra_body={"sinkwatch": {"block_at": 1.5}}, **CALM)
    assert "block_at" in bad.value.body["param"]
    response = client.chat.completions.create(
        model=MODEL, extra_body={"sinkwatch": {"policy": "block", "block_at": 0.99}}, **CALM
    )
    stability = response.model_extra["stability"]
    assert stability["gate"]["block_at"] == 0.99
    assert 0 <= stability["risk"] < 0.99
