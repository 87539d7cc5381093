"""``stability.prefill_risk`` end to end: the real model behind the embedded gateway, the official client.

The risk in the report is the shipped prefill probe applied to the prompt's last-position states (computed
here independently with the model) and the request's sampling; it is exported as ``sinkwatch_prefill_risk``;
a calibration without a prefill probe serves reports without the field, and no error.
"""

import json
from dataclasses import replace

import pytest
import torch

from gateway.config import Settings
from lab.fakes.processes import free_port
from monitors.bands import captured_layers
from monitors.calibration import Calibration, shipped_calibration_path
from monitors.capture import ResidualCapture
from monitors.prefill import RequestSampling
from tests.conftest import MODEL, metric, start_gateway

MESSAGES = [{"role": "user", "content": "Name three things people do on a rainy weekend."}]


def prompt_states(loaded_model, layers: tuple[int, ...]) -> torch.Tensor:
    """The residual stream at the prompt's last position at ``layers``, computed directly."""
    tokenizer = loaded_model.tokenizer
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    capture = ResidualCapture(loaded_model.decoder_layers, layers)
    with torch.inference_mode(), capture.attached():
        loaded_model.model(input_ids=ids)
        return capture.take()[0].numpy()


def test_the_report_carries_the_prefill_risk_and_the_histogram_counts_it(client, gateway, calibration, loaded_model):
    probe = calibration.prefill_probe
    assert probe is not None, "the shipped calibration has a prefill probe"
    score = probe.prompt_score(prompt_states(loaded_model, captured_layers(calibration.bands)))
    before = metric(gateway.base_url, "sinkwatch_prefill_risk_count", model=MODEL)
    before_sum = metric(gateway.base_url, "sinkwatch_prefill_risk_sum", model=MODEL)
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0)
    induced = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0, frequency_penalty=-1.0
    )
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0, frequency_penalty=-1.0, stream=True
    )
    streamed = [chunk.model_extra.get("stability") for chunk in stream]
    plain_risk = plain.model_extra["stability"]["prefill_risk"]
    induced_risk = induced.model_extra["stability"]["prefill_risk"]
    assert plain_risk == pytest.approx(probe.risk(score, RequestSampling(0.0, max_tokens=8)), abs=2e-3)
    assert induced_risk == pytest.approx(
        probe.risk(score, RequestSampling(0.0, frequency_penalty=-1.0, max_tokens=8)), abs=2e-3
    )
    assert induced_risk > plain_risk
    assert streamed[-1]["prefill_risk"] == induced_risk
    assert metric(gateway.base_url, "sinkwatch_prefill_risk_count", model=MODEL) == before + 3
    assert metric(gateway.base_url, "sinkwatch_prefill_risk_sum", model=MODEL) == pytest.approx(
        before_sum + plain_risk + 2 * induced_risk
    )


def test_a_calibration_without_a_prefill_probe_serves_without_the_field(tmp_path):
    from openai import OpenAI

    shipped = Calibration.from_json(shipped_calibration_path(MODEL).read_text())
    path = tmp_path / "calibration.json"
    path.write_text(replace(shipped, prefill_probe=None).to_json())
    assert "prefill_probe" not in json.loads(path.read_text())
    settings = Settings().replace(port=free_port(), calibration=str(path))
    with start_gateway(settings) as server:
        server.wait_ready()
        before = metric(server.base_url, "sinkwatch_prefill_risk_count", model=MODEL)
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0, timeout=120)
        answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0)
        stability = answer.model_extra["stability"]
        assert stability["tokens_monitored"] == answer.usage.completion_tokens
        assert "prefill_risk" not in stability
        assert metric(server.base_url, "sinkwatch_prefill_risk_count", model=MODEL) == before


def test_a_request_at_the_alarm_level_is_blocked_before_its_first_token(client, calibration):
    level = calibration.prefill_probe.alarm_level
    assert level is not None, "the shipped calibration acts on the prefill risk"
    answer = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=64,
        temperature=0,
        frequency_penalty=-2.0,
        presence_penalty=-2.0,
        extra_body={"repetition_penalty": 0.5, "sinkwatch": {"policy": "block"}},
    )
    stability = answer.model_extra["stability"]
    assert stability["prefill_risk"] >= level
    assert stability["verdict"] == "sink"
    assert {"signal": "prefill.risk", "since_token": 0}.items() <= stability["reasons"][-1].items()
    assert stability["last_stable_token"] is None
    assert (stability["gate"]["action"], stability["gate"]["outcome"]) == ("block", "blocked")
    assert answer.choices[0].finish_reason == "content_filter"
    assert not answer.choices[0].message.content
