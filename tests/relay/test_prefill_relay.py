"""``stability.prefill_risk`` on the ``vllm`` relay: the plugin's first-token features carry the prompt
probe's score (its states are the prompt's last position), the gateway combines it with the sampling of the
body the client sent. Against the fake vLLM (the plugin's real feature extractor), with the official client."""

from dataclasses import replace

import numpy as np
import pytest

from gateway.gate.monitor import prefill_sampling
from gateway.relay.resample import body_sampling
from monitors.prefill import PrefillProbe, RequestSampling
from monitors.probe import LinearProbe
from tests.backends.fake_vllm import MODEL, WIDTH, FakeVLLM
from tests.conftest import RunningServer, free_port, metric
from tests.gate.scripted import CALIBRATION
from tests.relay.conftest import client_of, relay_gateway

MESSAGES = [{"role": "user", "content": "hi"}]
TOKENS = 12


def _probe() -> PrefillProbe:
    weights = np.random.default_rng(7).normal(size=WIDTH) / np.sqrt(WIDTH)
    prompt = LinearProbe((1,), tuple(weights.tolist()), 0.1, (0.0,) * WIDTH, (1.0,) * WIDTH)
    return PrefillProbe(prompt, 1.5, (2.0, 1.5, 1.0, 0.2, 0.5, 0.1), -2.0)


def test_the_relay_reports_and_counts_the_prefill_risk():
    calibration = replace(CALIBRATION, prefill_probe=_probe())
    fake = FakeVLLM(calibration)
    fake.config.tokens = TOKENS
    with RunningServer(fake.app, free_port()) as upstream, relay_gateway(upstream, calibration) as server:
        server.wait_ready(timeout=30)
        before = metric(server.base_url, "sinkwatch_prefill_risk_count", model=MODEL)
        body = {"temperature": 0, "frequency_penalty": -1.0, "max_tokens": TOKENS}
        answer = client_of(server).chat.completions.create(model=MODEL, messages=MESSAGES, **body)
        counted = metric(server.base_url, "sinkwatch_prefill_risk_count", model=MODEL) - before
    fake.close()
    first_states = np.random.default_rng(TOKENS).normal(size=(TOKENS, 1, WIDTH))[0]  # the fake's seeded states
    probe = calibration.prefill_probe
    expected = probe.risk(probe.prompt_score(first_states), prefill_sampling(body_sampling(body)))
    assert answer.model_extra["stability"]["prefill_risk"] == pytest.approx(expected, abs=1e-4)
    assert counted == 1


def test_the_relay_without_a_prefill_probe_reports_none(fake, relay_server):
    answer = client_of(relay_server).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert answer.model_extra["stability"]["tokens_monitored"] == 4
    assert "prefill_risk" not in answer.model_extra["stability"]


def test_sampling_is_read_from_an_openai_body():
    body = {
        "temperature": 0,
        "frequency_penalty": -1,
        "repetition_penalty": 0.8,
        "logit_bias": {"262": 6, "11": -2},
        "max_completion_tokens": 64,
    }
    assert prefill_sampling(body_sampling(body)) == RequestSampling(0.0, 0.8, -1.0, 0.0, 6.0, 64)
    assert prefill_sampling(body_sampling({"max_tokens": 10})) == RequestSampling(max_tokens=10)
    assert prefill_sampling(body_sampling({"temperature": None})) == RequestSampling()
