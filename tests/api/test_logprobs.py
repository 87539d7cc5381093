"""``logprobs`` / ``top_logprobs`` from the embedded engine, through the official client, whole and streamed."""

import math

import httpx
import pytest

from tests.conftest import MODEL

HELLO = [{"role": "user", "content": "Name three colors."}]
PROMPT = "The capital of France is"


def _check_entry(entry, top: int) -> None:
    """A reported token: a finite log-probability, bytes that spell the token, the most likely tokens first."""
    assert math.isfinite(entry.logprob) and entry.logprob <= 0
    assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
    assert len(entry.top_logprobs) == top
    values = [alternative.logprob for alternative in entry.top_logprobs]
    assert values == sorted(values, reverse=True)
    assert all(math.isfinite(value) and value <= 0 for value in values)


def test_chat_logprobs_are_the_greedy_tokens_of_the_answer(client):
    response = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=8, temperature=0, logprobs=True, top_logprobs=5
    )
    choice = response.choices[0]
    assert choice.finish_reason == "length"  # every generated token is content (an end token would not be)
    content = choice.logprobs.content
    assert len(content) == response.usage.completion_tokens
    for entry in content:
        _check_entry(entry, top=5)
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == entry.logprob
    assert b"".join(bytes(entry.bytes) for entry in content).decode() == choice.message.content


def test_streamed_chat_logprobs_match_the_whole_answer(client):
    whole = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=10, temperature=0, logprobs=True, top_logprobs=2
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=10, temperature=0, logprobs=True, top_logprobs=2, stream=True
        )
    )
    streamed = [entry for c in chunks if c.choices and c.choices[0].logprobs for entry in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in whole.choices[0].logprobs.content]
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:  # every piece of text carries its tokens
            assert chunk.choices[0].logprobs.content


def test_logprobs_without_alternatives_and_none_when_not_asked(client):
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None
    bare = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=0, logprobs=True)
    assert len(bare.choices[0].logprobs.content) == 4
    assert all(entry.top_logprobs == [] for entry in bare.choices[0].logprobs.content)


def test_logprobs_are_the_models_own_distribution_whatever_the_temperature(client):
    """Raw log-probabilities: the same tokens get the same values at temperature 0 and 2 (seeded)."""
    greedy = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=1, temperature=0, logprobs=True, top_logprobs=3
    )
    hot = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=1, temperature=2, seed=1, logprobs=True, top_logprobs=3
    )
    tops = [
        [(t.token, round(t.logprob, 4)) for t in r.choices[0].logprobs.content[0].top_logprobs] for r in (greedy, hot)
    ]
    assert tops[0] == tops[1]


def test_legacy_completion_logprobs_whole_and_streamed(client):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    logprobs = whole.choices[0].logprobs
    assert "".join(logprobs.tokens) == whole.choices[0].text
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 6
    offsets = [sum(len(token) for token in logprobs.tokens[:i]) for i in range(6)]
    assert logprobs.text_offset == offsets
    for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert math.isfinite(value) and value <= 0
        assert top[token] == value == max(top.values())  # greedy: the sampled token is the most likely
        assert len(top) == 3
    chunks = list(
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3, stream=True)
    )
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [token for lp in streamed for token in lp.tokens] == logprobs.tokens
    assert [offset for lp in streamed for offset in lp.text_offset] == logprobs.text_offset


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 2.0}, "top_logprobs"),
        ("/v1/completions", {"logprobs": 21}, "logprobs"),
        ("/v1/completions", {"logprobs": True}, "logprobs"),
    ],
)
def test_out_of_range_logprobs_are_400_naming_the_parameter(gateway, path, extra, param):
    prompt = {"messages": HELLO} if path.endswith("chat/completions") else {"prompt": PROMPT}
    response = httpx.post(f"{gateway.base_url}{path}", json={"model": MODEL, **prompt, **extra}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
