"""The vllm backend against a fake vLLM that behaves like one running the plugin."""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from gateway.backends.vllm import vllm_backend
from gateway.config import Settings
from gateway.errors import UpstreamError, UpstreamRejected
from gateway.generation import (
    ChatPrompt,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    StartEvent,
    TextPrompt,
    TokenEvent,
)
from monitors.calibration import Calibration
from monitors.model_profile import ModelProfile, uncalibrated
from monitors.vllm_plugin.wire import REQUEST_ID_ARG, SINK_ARG, monitor_profile
from tests.backends.fake_vllm import MODEL, FakeVLLM
from tests.conftest import RunningServer, metric

CHAT = ChatPrompt(({"role": "user", "content": "hi"},))


def _request(request_id: str = "chatcmpl-1", **changes) -> GenerationRequest:
    request = GenerationRequest(request_id, MODEL, CHAT, SamplingParams(max_tokens=8, temperature=0.0))
    return replace(request, **changes)


async def _events(
    fake: tuple[FakeVLLM, RunningServer], calibration: Calibration | None, request: GenerationRequest, **opts
):
    """Every event of ``request`` through a started backend in front of the fake."""
    _, upstream = fake
    settings = Settings().replace(backend="vllm", upstreams=f"{upstream.base_url}/v1", **opts)
    backend = vllm_backend(settings, calibration, None)
    await backend.start()
    try:
        events: AsyncIterator = backend.generate(request)
        return [event async for event in events]
    finally:
        await backend.close()


def _tokens(events: list) -> list[TokenEvent]:
    return [e for e in events if isinstance(e, TokenEvent)]


def test_each_token_carries_its_features_in_order(fake_vllm, calibration):
    events = asyncio.run(_events(fake_vllm, calibration, _request()))
    assert isinstance(events[0], StartEvent) and isinstance(events[-1], FinishEvent)
    tokens = _tokens(events)
    assert [t.token_id for t in tokens] == [FakeVLLM.token_id(i) for i in range(8)]
    assert [t.features.index for t in tokens] == list(range(8))
    assert [t.features.token_id for t in tokens] == [t.token_id for t in tokens]
    assert "".join(t.text for t in tokens) == "".join(f" t{i}" for i in range(8))
    assert events[-1] == FinishEvent("length", 5, 8)


def test_the_request_asks_for_token_ids_and_tags_itself_for_the_plugin(fake_vllm, calibration):
    fake, _ = fake_vllm
    asyncio.run(_events(fake_vllm, calibration, _request("chatcmpl-42")))
    body = fake.bodies[-1]
    assert body["return_token_ids"] is True and body["stream"] is True
    assert body["vllm_xargs"][REQUEST_ID_ARG] == "chatcmpl-42"
    assert body["vllm_xargs"][SINK_ARG].startswith("tcp://127.0.0.1:")
    assert fake.request_ids[-1] == "chatcmpl-42"


def test_an_unmonitored_request_is_not_tagged(fake_vllm, calibration):
    fake, _ = fake_vllm
    events = asyncio.run(_events(fake_vllm, calibration, _request(monitor=False)))
    assert "vllm_xargs" not in fake.bodies[-1]
    assert all(t.features is None for t in _tokens(events))


def test_without_a_calibration_the_plugins_uncalibrated_features_on_its_own_bands_are_taken(fake_vllm, calibration):
    fake, _ = fake_vllm
    worker = uncalibrated(MODEL, ModelProfile(calibration.bands, {}, {}))
    fake.config.profile = monitor_profile(worker, worker.bands)  # the plugin's: the model's thirds, no thresholds
    tokens = _tokens(asyncio.run(_events(fake_vllm, None, _request())))
    assert REQUEST_ID_ARG in fake.bodies[-1]["vllm_xargs"]
    assert len(tokens) == 8 and all(t.features is not None for t in tokens)


def test_without_a_calibration_features_judged_by_a_calibration_are_dropped(fake_vllm):
    # the fake publishes under the shipped calibration's profile: another judge than none
    tokens = _tokens(asyncio.run(_events(fake_vllm, None, _request(), vllm_stats_timeout=0.5)))
    assert all(t.features is None for t in tokens)


def test_a_calibration_found_for_another_name_than_the_upstream_serves_is_not_used(fake_vllm, calibration):
    _, upstream = fake_vllm
    other = replace(calibration, model="another-model")

    async def run() -> Calibration | None:
        settings = Settings().replace(backend="vllm", upstreams=f"{upstream.base_url}/v1", model="another-model")
        backend = vllm_backend(settings, other, None)
        await backend.start()
        await backend.close()
        return backend.calibration

    in_use = asyncio.run(run())
    assert (in_use.model, in_use.calibrated, in_use.signals) == (MODEL, False, ())


def test_features_that_arrive_after_their_token_are_waited_for(fake_vllm, calibration):
    fake, _ = fake_vllm
    fake.config.features, fake.config.delay = "after", 0.1
    tokens = _tokens(asyncio.run(_events(fake_vllm, calibration, _request(), vllm_stats_timeout=2.0)))
    assert all(t.features is not None for t in tokens)


def test_tokens_go_on_without_features_that_never_come_waiting_only_once(fake_vllm, calibration):
    fake, _ = fake_vllm
    fake.config.features = "none"
    started = time.monotonic()
    tokens = _tokens(asyncio.run(_events(fake_vllm, calibration, _request(), vllm_stats_timeout=0.5)))
    assert len(tokens) == 8 and all(t.features is None for t in tokens)
    assert time.monotonic() - started < 0.5 * 3  # the first token waits; the others do not


def test_features_of_another_monitoring_profile_are_dropped(fake_vllm, calibration):
    fake, _ = fake_vllm
    fake.config.profile = "other-model@2020-01-01|early=1|w32"
    tokens = _tokens(asyncio.run(_events(fake_vllm, calibration, _request(), vllm_stats_timeout=0.3)))
    assert all(t.features is None for t in tokens)


def test_a_rescue_continues_the_accepted_text_as_a_partial_assistant_message(fake_vllm, calibration):
    fake, _ = fake_vllm
    asyncio.run(_events(fake_vllm, calibration, _request(continuation="Once upon")))
    body = fake.bodies[-1]
    assert body["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


def test_a_text_prompt_goes_to_completions(fake_vllm, calibration):
    fake, _ = fake_vllm
    events = asyncio.run(_events(fake_vllm, calibration, _request(prompt=TextPrompt(text="Once"))))
    assert fake.bodies[-1]["prompt"] == "Once"
    assert all(t.features is not None for t in _tokens(events))


def test_an_upstream_client_error_passes_through_as_an_openai_error(fake_vllm, calibration):
    fake, _ = fake_vllm
    fake.config.status = 400
    with pytest.raises(UpstreamRejected) as refused:
        asyncio.run(_events(fake_vllm, calibration, _request()))
    assert refused.value.status_code == 400 and "fake failure" in refused.value.message


def test_an_upstream_server_error_is_a_bad_gateway(fake_vllm, calibration):
    fake, _ = fake_vllm
    fake.config.status = 500
    with pytest.raises(UpstreamError) as failed:
        asyncio.run(_events(fake_vllm, calibration, _request()))
    assert failed.value.status_code == 502


def test_the_gateway_reports_stability_from_the_plugins_features(vllm_gateway):
    from openai import OpenAI

    client = OpenAI(base_url=f"{vllm_gateway.base_url}/v1", api_key="x", max_retries=0, timeout=30)
    before = metric(vllm_gateway.base_url, "sinkwatch_vllm_stats_total", outcome="received")
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    report = answer.model_extra["stability"]
    assert report["tokens_monitored"] == 8
    assert answer.choices[0].message.content == "".join(f" t{i}" for i in range(8))
    assert metric(vllm_gateway.base_url, "sinkwatch_vllm_stats_total", outcome="received") - before == 8


def test_the_gateway_streams_the_report_on_the_last_chunk(vllm_gateway):
    from openai import OpenAI

    client = OpenAI(base_url=f"{vllm_gateway.base_url}/v1", api_key="x", max_retries=0, timeout=30)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
        )
    )
    reports = [c.model_extra["stability"] for c in chunks if (c.model_extra or {}).get("stability")]
    assert len(reports) == 1 and reports[0]["tokens_monitored"] == 8
