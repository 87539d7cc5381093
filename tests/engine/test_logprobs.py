"""The engine's log-probabilities: the raw distribution of a step, and each token's exact bytes."""

import math

import pytest
import torch
from transformers import AutoTokenizer

from gateway.engine.logprobs import LOGPROB_FLOOR, TokenTexts, step_logprobs
from gateway.engine.provision import DEFAULT_MODEL, provision


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(provision(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def texts(tokenizer) -> TokenTexts:
    return TokenTexts(tokenizer)


def test_token_bytes_rebuild_text_split_inside_characters(tokenizer, texts):
    text = "Héllo wörld 😀 — ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    raws = [texts.raw(token) for token in ids]
    assert b"".join(raws).decode() == text
    assert any(_partial(raw) for raw in raws)  # the emoji is split: some token holds part of a character
    for token, raw in zip(ids, raws, strict=True):
        assert texts.entry(token, -0.5).token == raw.decode("utf-8", errors="replace")


def _partial(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return True
    return False


def test_step_logprobs_are_the_log_softmax_of_the_raw_logits(tokenizer, texts):
    torch.manual_seed(0)
    logits = torch.randn(3, tokenizer.vocab_size) * 4
    tokens = [5, 17, 42]
    rows = step_logprobs(logits, tokens, [3, None, 0], texts)
    assert rows[1] is None
    reference = torch.log_softmax(logits, dim=-1)
    assert rows[0].sampled.logprob == pytest.approx(float(reference[0, 5]), abs=1e-5)
    assert rows[2].sampled.logprob == pytest.approx(float(reference[2, 42]), abs=1e-5)
    assert rows[2].top == ()
    top = rows[0].top
    assert [entry.logprob for entry in top] == pytest.approx(torch.topk(reference[0], 3).values.tolist(), abs=1e-5)
    assert top[0].raw == texts.raw(int(reference[0].argmax()))
    assert math.isclose(sum(math.exp(v) for v in reference[0].tolist()), 1.0, rel_tol=1e-4)


def test_impossible_tokens_get_a_finite_floor(tokenizer, texts):
    logits = torch.zeros(1, tokenizer.vocab_size)
    logits[0, 7] = -math.inf
    (row,) = step_logprobs(logits, [7], [1], texts)
    assert row.sampled.logprob == LOGPROB_FLOOR
