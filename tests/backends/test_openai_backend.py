"""The ``openai`` backend's generations (the path the gate and rescue use): upstream requests, events, errors."""

import pytest

from gateway.backends.openai import OpenAIBackend, upstream_request
from gateway.errors import UnsupportedParameter, UpstreamError, UpstreamRejected
from gateway.generation import (
    ChatPrompt,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    StartEvent,
    TextPrompt,
    TokenEvent,
)
from gateway.upstream.pool import PoolConfig, UpstreamPool
from lab.fakes.fake_upstream import FakeUpstream, FakeUpstreamConfig, Fault

pytestmark = pytest.mark.anyio
MESSAGES = ({"role": "user", "content": "Tell me a story."},)


def _request(prompt, continuation: str = "", **sampling) -> GenerationRequest:
    params = SamplingParams(max_tokens=sampling.pop("max_tokens", 8), **sampling)
    return GenerationRequest("req-1", "fake-model", prompt, params, continuation=continuation)


def test_a_chat_generation_streams_with_usage_and_its_sampling():
    request = _request(ChatPrompt(MESSAGES), temperature=0.5, seed=3, stop=("\n",), repetition_penalty=1.2)
    path, body = upstream_request(request, "continue_final_message")
    assert path == "/chat/completions"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["seed"], body["stop"], body["max_tokens"]) == (0.5, 3, ["\n"], 8)
    assert body["repetition_penalty"] == 1.2
    assert "presence_penalty" not in body and "logit_bias" not in body
    assert body["messages"] == list(MESSAGES)


def test_a_chat_continuation_ends_with_the_accepted_prefix_as_a_partial_assistant_message():
    _, body = upstream_request(_request(ChatPrompt(MESSAGES), "Once upon"), "continue_final_message")
    assert body["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


def test_a_text_continuation_is_a_completion_of_prompt_plus_prefix():
    path, body = upstream_request(_request(TextPrompt(text="Q: 1+1?\nA:"), " 2, because"), "none")
    assert path == "/completions"
    assert body["prompt"] == "Q: 1+1?\nA: 2, because"


def test_continuations_the_upstream_cannot_take_are_refused():
    with pytest.raises(UnsupportedParameter):
        upstream_request(_request(ChatPrompt(MESSAGES), "Once"), "none")
    with pytest.raises(UnsupportedParameter):
        upstream_request(_request(TextPrompt(token_ids=(1, 2, 3)), "more"), "continue_final_message")


async def _generate(config: FakeUpstreamConfig, request: GenerationRequest) -> list:
    async with FakeUpstream(config) as fake:
        backend = OpenAIBackend(UpstreamPool([("fake", fake.base_url)], PoolConfig(health_interval=60)))
        await backend.start()
        try:
            return [event async for event in backend.generate(request)]
        finally:
            await backend.close()


async def test_a_generation_yields_start_text_and_a_finish_with_the_upstreams_usage():
    events = await _generate(FakeUpstreamConfig(tokens=8), _request(ChatPrompt(MESSAGES), max_tokens=5))
    assert isinstance(events[0], StartEvent)
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == " w0 w1 w2 w3 w4"
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert (finish.finish_reason, finish.completion_tokens) == ("length", 5)
    assert finish.prompt_tokens > 0


async def test_an_upstream_refusal_is_raised_before_the_first_event():
    with pytest.raises(UpstreamRejected) as refused:
        await _generate(FakeUpstreamConfig(fault=Fault.STATUS_400), _request(ChatPrompt(MESSAGES)))
    assert refused.value.status_code == 400 and refused.value.param == "max_tokens"


async def test_a_stream_broken_midway_raises_after_the_text_before_it():
    seen: list = []
    with pytest.raises(UpstreamError, match="closed the connection"):
        async with FakeUpstream(FakeUpstreamConfig(fault=Fault.RESET, fault_after_tokens=3)) as fake:
            backend = OpenAIBackend(UpstreamPool([("fake", fake.base_url)], PoolConfig(health_interval=60)))
            await backend.start()
            try:
                async for event in backend.generate(_request(ChatPrompt(MESSAGES))):
                    seen.append(event)
            finally:
                await backend.close()
    assert "".join(e.text for e in seen if isinstance(e, TokenEvent)) == " w0 w1 w2"
