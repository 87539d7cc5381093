"""Incremental detokenisation: whole characters only, OpenAI stop semantics."""

import pytest
from transformers import AutoTokenizer

from gateway.engine.detokenizer import IncrementalDetokenizer
from gateway.engine.provision import DEFAULT_MODEL, provision


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(provision(DEFAULT_MODEL))


def _stream(tokenizer, text: str, stop=()) -> tuple[list[str], str, bool]:
    detok = IncrementalDetokenizer(tokenizer, stop)
    pieces = [detok.push(t) for t in tokenizer.encode(text, add_special_tokens=False)]
    pieces.append(detok.flush())
    return pieces, "".join(pieces), detok.stopped


@pytest.mark.parametrize("text", ["Hello, world!", "naïve café 🚀 日本語 text", "  spaces\n\nand\ttabs  "])
def test_deltas_reassemble_the_text_without_broken_characters(tokenizer, text):
    pieces, joined, _ = _stream(tokenizer, text)
    assert joined == text
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_ends_text_before_it(tokenizer):
    _, joined, stopped = _stream(tokenizer, "one two three four five", stop=(" four",))
    assert stopped
    assert joined == "one two three"


def test_text_that_might_become_a_stop_is_held_then_released(tokenizer):
    pieces, joined, stopped = _stream(tokenizer, "alpha beta gamma", stop=(" gammaray",))
    assert not stopped
    assert joined == "alpha beta gamma"
    assert pieces[-1].endswith("gamma")


def test_nothing_after_the_stop(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, ("END",))
    out = [detok.push(t) for t in tokenizer.encode("abc END more text", add_special_tokens=False)]
    assert "".join(out) == "abc "
    assert detok.flush() == ""
