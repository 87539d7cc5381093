"""Requests on their way into the engine: refused before tokenizing when they cannot fit, tokenized off the
event loop, given a completion limit when they name none, refused above the configured cap."""

import asyncio
import threading

import pytest

from gateway.engine import intake as intake_module
from gateway.engine.engine_config import EngineConfig
from gateway.engine.intake import RequestIntake
from gateway.errors import ContextLengthExceeded, InvalidRequest
from gateway.generation import ChatPrompt, GenerationRequest, SamplingParams, TextPrompt
from tests.conftest import MODEL


def _chat(content: str, max_tokens: int | None = None) -> GenerationRequest:
    prompt = ChatPrompt(({"role": "user", "content": content},))
    return GenerationRequest("r", MODEL, prompt, SamplingParams(max_tokens=max_tokens))


def _prepare(loaded_model, request: GenerationRequest, **config) -> tuple[GenerationRequest, list[int]]:
    intake = RequestIntake(loaded_model, EngineConfig(**config))
    try:
        return asyncio.run(intake.prepare(request))
    finally:
        intake.close()


def test_templating_and_tokenizing_run_on_the_tokenizer_thread(loaded_model, monkeypatch):
    threads = []
    encode = intake_module.encode_prompt

    def recording(loaded, request):
        threads.append(threading.current_thread().name)
        return encode(loaded, request)

    monkeypatch.setattr(intake_module, "encode_prompt", recording)
    _, ids = _prepare(loaded_model, _chat("Hello there", max_tokens=4))
    assert ids and threads and threads[0].startswith("sinkwatch-tokenizer")


@pytest.mark.parametrize(
    "request_",
    [
        _chat("word " * 800_000),
        GenerationRequest("r", MODEL, TextPrompt(text="x" * 3_900_000), SamplingParams(max_tokens=4)),
        GenerationRequest("r", MODEL, TextPrompt(token_ids=(5,) * 2048), SamplingParams(max_tokens=4)),
    ],
    ids=["chat", "text", "token ids"],
)
def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(loaded_model, monkeypatch, request_):
    def never(*_):
        raise AssertionError("tokenized a prompt that could not fit")

    monkeypatch.setattr(intake_module, "encode_prompt", never)
    with pytest.raises(ContextLengthExceeded) as refused:
        _prepare(loaded_model, request_)
    assert refused.value.param in ("messages", "prompt")


def test_the_early_bound_never_refuses_a_prompt_that_fits(loaded_model):
    """The longest token's text 1,900 times: close to the bound, and it tokenizes into fewer than 2,048 tokens."""
    longest = max(loaded_model.tokenizer.get_vocab(), key=len)
    text = loaded_model.tokenizer.convert_tokens_to_string([longest]) * 1900
    request, ids = _prepare(loaded_model, _chat(text), max_model_len=2048)
    assert len(ids) < 2048 and request.sampling.max_tokens >= 1


def test_a_request_naming_no_limit_gets_the_default_within_the_context(loaded_model):
    request, ids = _prepare(loaded_model, _chat("Hi"), default_max_tokens=7)
    assert request.sampling.max_tokens == 7
    request, ids = _prepare(loaded_model, _chat("Hi"), default_max_tokens=0, max_model_len=512)
    assert request.sampling.max_tokens == 512 - len(ids)
    request, ids = _prepare(loaded_model, _chat("Hi"), default_max_tokens=100_000, max_model_len=512)
    assert request.sampling.max_tokens == 512 - len(ids)


def test_a_limit_above_the_cap_is_refused(loaded_model):
    with pytest.raises(InvalidRequest) as refused:
        _prepare(loaded_model, _chat("Hi", max_tokens=65), max_tokens_limit=64)
    assert refused.value.param == "max_tokens" and "64" in refused.value.message
    request, _ = _prepare(loaded_model, _chat("Hi", max_tokens=64), max_tokens_limit=64)
    assert request.sampling.max_tokens == 64
