"""Continuous batching: joining, leaving and sampling in a shared batch change no request's output."""

import asyncio

import pytest

from gateway.engine.engine import EmbeddedEngine, EngineConfig
from gateway.engine.loader import load_model
from gateway.engine.provision import DEFAULT_MODEL, provision
from gateway.errors import Overloaded
from gateway.generation import ChatPrompt, FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from monitors.bands import default_bands

PROMPTS = ["What is 2+2?", "Tell me about the ocean in detail.", "Name a fruit.", "Write a haiku about snow."]


@pytest.fixture(scope="module")
def loaded():
    return load_model(provision(DEFAULT_MODEL), DEFAULT_MODEL)


def _request(i: int, prompt: str, max_tokens: int, **sampling) -> GenerationRequest:
    params = SamplingParams(max_tokens=max_tokens, **sampling)
    return GenerationRequest(f"r{i}", DEFAULT_MODEL, ChatPrompt(({"role": "user", "content": prompt},)), params)


async def _run(engine: EmbeddedEngine, request: GenerationRequest, delay: float = 0.0) -> tuple[list[int], str]:
    await asyncio.sleep(delay)
    ids = []
    async for event in engine.submit(request, engine.encode_prompt(request)):
        if isinstance(event, TokenEvent) and event.token_id is not None:
            ids.append(event.token_id)
        if isinstance(event, FinishEvent):
            return ids, event.finish_reason
    raise AssertionError("no finish event")


def _with_engine(loaded, config: EngineConfig, coro_factory):
    engine = EmbeddedEngine(loaded, config, default_bands(loaded.num_layers))
    engine.start()
    try:
        return asyncio.run(coro_factory(engine))
    finally:
        engine.shutdown()


@pytest.mark.filterwarnings("error::FutureWarning")  # no deprecated transformers API (past_key_values)
def test_batched_requests_match_solo_runs(loaded):
    requests = [_request(i, p, 12, temperature=0.0) for i, p in enumerate(PROMPTS)]
    requests.append(_request(9, PROMPTS[1], 12, temperature=0.9, seed=3))

    async def solo(engine):
        return [await _run(engine, r) for r in requests]

    async def together(engine):
        # staggered starts: requests join a batch that is already decoding
        return await asyncio.gather(*(_run(engine, r, delay=0.05 * i) for i, r in enumerate(requests)))

    alone = _with_engine(loaded, EngineConfig(max_batch=1), solo)
    batched = _with_engine(loaded, EngineConfig(max_batch=8), together)
    assert batched == alone


def test_abandoned_request_leaves_the_batch(loaded):
    async def scenario(engine):
        events = engine.submit(
            _request(0, PROMPTS[1], 500, temperature=0.0), engine.encode_prompt(_request(0, PROMPTS[1], 500))
        )
        await anext(events)
        await events.aclose()
        survivor = await _run(engine, _request(1, PROMPTS[0], 8, temperature=0.0))
        for _ in range(100):
            if engine.active == 0:
                break
            await asyncio.sleep(0.05)
        return survivor, engine.active

    (ids, _), active = _with_engine(loaded, EngineConfig(max_batch=4), scenario)
    assert ids and active == 0


def test_full_queue_refuses_with_overloaded(loaded):
    async def scenario(engine):
        runs = [asyncio.ensure_future(_run(engine, _request(i, PROMPTS[0], 30, temperature=0.0))) for i in range(3)]
        results = await asyncio.gather(*runs, return_exceptions=True)
        return results

    results = _with_engine(loaded, EngineConfig(max_batch=1, max_queue=1), scenario)
    assert any(isinstance(r, Overloaded) for r in results)
    assert any(isinstance(r, tuple) for r in results)


def test_failed_decode_step_fails_the_batch_and_the_engine_keeps_serving(loaded, monkeypatch):
    from gateway.errors import EngineFailure

    async def scenario(engine):
        original = engine._decode_step
        calls = {"n": 0}

        def flaky_step():
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("simulated kernel failure")
            original()

        monkeypatch.setattr(engine, "_decode_step", flaky_step)
        failed = await asyncio.gather(
            _run(engine, _request(0, PROMPTS[0], 20, temperature=0.0)), return_exceptions=True
        )
        recovered = await _run(engine, _request(1, PROMPTS[2], 5, temperature=0.0))
        return failed[0], recovered

    failed, (ids, reason) = _with_engine(loaded, EngineConfig(max_batch=2), scenario)
    assert isinstance(failed, EngineFailure)
    assert ids and reason in {"stop", "length"}


def test_a_request_whose_own_step_fails_fails_alone_and_is_logged(loaded, monkeypatch, caplog):
    from gateway.engine.sampling import RowSampler
    from gateway.errors import EngineFailure

    original = RowSampler.sample

    def sample(sampler, logits):
        if sampler.params.seed == 666:
            raise IndexError("simulated empty nucleus")
        return original(sampler, logits)

    monkeypatch.setattr(RowSampler, "sample", sample)

    async def scenario(engine):
        normal = [
            asyncio.ensure_future(_run(engine, _request(i, p, 16, temperature=0.0))) for i, p in enumerate(PROMPTS)
        ]
        await asyncio.sleep(0.3)  # the normal requests are decoding when the bad one joins
        bad = await asyncio.gather(
            _run(engine, _request(9, PROMPTS[0], 16, seed=666, top_p=0.5)), return_exceptions=True
        )
        return bad[0], await asyncio.gather(*normal)

    bad, normal = _with_engine(loaded, EngineConfig(max_batch=8), scenario)
    assert isinstance(bad, EngineFailure) and "IndexError" in bad.message
    assert all(ids and reason in {"stop", "length"} for ids, reason in normal)
    assert any(r.exc_info and "request r9" in r.getMessage() for r in caplog.records)
