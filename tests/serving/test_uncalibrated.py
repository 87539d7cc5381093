"""A model without a calibration, served by the embedded engine: its monitors run on the model's own profile,
every report says ``uncalibrated`` with the raw signals, block and rescue refuse to act on it, and the metrics
say so. The real model under a served name that has no calibration (so nothing of SmolLM2's may judge it);
the same forced loop on the calibrated gateway shows what the uncalibrated one does not do."""

import json
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from gateway.config import Settings
from lab.fakes.processes import free_port
from monitors.calibration import load_calibration
from tests.conftest import MODEL, RunningServer, metric, start_gateway

UNCALIBRATED_NAME = "smollm2-without-calibration"
LOOP = {
    "messages": [{"role": "user", "content": "Tell me about the ocean."}],
    "max_tokens": 64,
    "temperature": 0,
}
LOOP_EXTRA = {"repetition_penalty": 0.8}  # greedy with this penalty loops, see tests/gate/test_gate_e2e.py


@pytest.fixture(scope="module")
def uncalibrated_gateway() -> Iterator[RunningServer]:
    with pytest.raises(FileNotFoundError):
        load_calibration(UNCALIBRATED_NAME)
    settings = Settings().replace(port=free_port(), served_model_name=UNCALIBRATED_NAME, max_batch=4)
    with start_gateway(settings) as server:
        server.wait_ready()
        yield server


def _client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0, timeout=120)


def _loop(server: RunningServer, model: str, policy: str):
    extra_body = {"sinkwatch": {"policy": policy}, **LOOP_EXTRA}
    return _client(server).chat.completions.with_raw_response.create(model=model, extra_body=extra_body, **LOOP)


def test_the_report_says_uncalibrated_and_carries_the_raw_signals(uncalibrated_gateway):
    raw = _loop(uncalibrated_gateway, UNCALIBRATED_NAME, "annotate")
    stability = raw.parse().model_extra["stability"]
    assert raw.headers["x-sinkwatch-verdict"] == "uncalibrated"
    assert (stability["verdict"], stability["reason"]) == ("uncalibrated", "uncalibrated")
    assert stability["reasons"] == [] and stability["calibration"] is None and stability["risk"] is None
    assert stability["tokens_monitored"] == 64
    # the model's own thirds (SmolLM2's 30 layers: the shipped calibration's bands, derived, not borrowed)
    assert {name: band["layers"] for name, band in stability["bands"].items()} == {
        "early": [4, 7],
        "middle": [13, 17],
        "late": [23, 27],
    }
    signals = stability["signals"]
    for name in ("entropy", "text.periodicity", "late.pr", "middle.recurrence", "early.drift"):
        values = signals[name]
        assert values["min"] <= values["latest"] <= values["max"], name
    assert signals["text.periodicity"]["max"] == 1.0  # the loop is in the raw signal; nothing judges it
    assert not any(name.endswith(".pr_novel") or name.endswith(".rank_margin") for name in signals)
    assert "probe" not in signals  # a probe is fitted by calibration


@pytest.mark.parametrize("policy", ["block", "rescue"])
def test_block_and_rescue_refuse_to_act_and_say_so(uncalibrated_gateway, gateway, policy):
    calibrated = _loop(gateway, MODEL, policy).parse()
    assert calibrated.model_extra["stability"]["gate"]["action"] == policy  # the same loop, judged, is acted on
    response = _loop(uncalibrated_gateway, UNCALIBRATED_NAME, policy).parse()
    stability = response.model_extra["stability"]
    assert (stability["gate"]["action"], stability["gate"]["reason"]) == ("none", "uncalibrated")
    assert stability["gate"]["outcome"] is None and len(stability["gate"]["attempts"]) == 1
    assert (stability["verdict"], stability["policy"]) == ("uncalibrated", policy)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 64


def test_a_stream_ends_with_the_uncalibrated_report(uncalibrated_gateway):
    body = {**LOOP, **LOOP_EXTRA, "model": UNCALIBRATED_NAME, "stream": True, "sinkwatch": {"policy": "block"}}
    with httpx.stream("POST", f"{uncalibrated_gateway.base_url}/v1/chat/completions", json=body, timeout=120) as r:
        lines = [line for line in r.iter_lines() if line]
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    stability = chunks[-1]["stability"]
    assert stability["verdict"] == "uncalibrated" and stability["gate"]["action"] == "none"
    assert stability["gate"]["holdback_tokens"] == 0  # nothing to hold text back for
    assert stability["signals"]["late.pr"]["max"] > 0


def test_metrics_say_which_model_is_uncalibrated(uncalibrated_gateway, gateway):
    url = uncalibrated_gateway.base_url
    before = metric(url, "sinkwatch_verdicts_total", model=UNCALIBRATED_NAME, verdict="uncalibrated")
    refused = metric(url, "sinkwatch_gate_actions_total", model=UNCALIBRATED_NAME, action="none", reason="uncalibrated")
    _loop(uncalibrated_gateway, UNCALIBRATED_NAME, "block")
    assert metric(url, "sinkwatch_model_calibrated", model=UNCALIBRATED_NAME) == 0
    assert metric(gateway.base_url, "sinkwatch_model_calibrated", model=MODEL) == 1
    assert metric(url, "sinkwatch_verdicts_total", model=UNCALIBRATED_NAME, verdict="uncalibrated") == before + 1
    assert metric(url, "sinkwatch_verdicts_total", model=UNCALIBRATED_NAME, verdict="ok") == 0
    after = metric(url, "sinkwatch_gate_actions_total", model=UNCALIBRATED_NAME, action="none", reason="uncalibrated")
    assert after == refused + 1
