"""Shadow recording against a real vLLM with the plugin: a gateway under ``observe`` in front of it records
every choice with the signals the plugin computed, and a calibration fitted on the recording loads."""

import json
import subprocess
import sys

import pytest

from gateway.config import Settings
from lab.bench.vllm_server import VLLMServer
from tests.backends.fake_vllm import MODEL
from tests.conftest import free_port, samples, start_gateway, wait_for

pytestmark = pytest.mark.vllm

PROMPTS = ["Name three colours.", "What is the capital of France?", "Write one sentence about the sea."]


def test_observed_traffic_through_vllm_is_recorded_and_calibrates(vllm_server: VLLMServer, tmp_path):
    import openai

    recording = tmp_path / "recording"
    settings = Settings().replace(
        backend="vllm", upstreams=vllm_server.url, port=free_port(), policy="observe", record_dir=str(recording)
    )
    with start_gateway(settings) as server:
        server.wait_ready(timeout=60)
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=300)
        for prompt in PROMPTS:
            client.chat.completions.create(  # vLLM's ignore_eos: every answer is 48 tokens, past the window
                model=MODEL,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=48,
                n=2,
                temperature=0.8,
                extra_body={"ignore_eos": True},
            )
        wait_for(
            lambda: sum(v for _, v in samples(server.base_url, "sinkwatch_recorded_generations_total")) >= 6,
            timeout=60,
        )
    records = [json.loads(line) for p in recording.glob("traffic-*.jsonl") for line in p.read_text().splitlines()]
    assert len(records) == 2 * len(PROMPTS)
    for record in records:
        assert record["backend"] == "vllm" and record["sampling"]["temperature"] == 0.8
        assert record["tokens"] == 48 and record["finish_reason"] == "length"
        assert {"entropy", "text.periodicity", "middle.recurrence", "late.pr"} <= set(record["signals"])
    output = tmp_path / "traffic.json"
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "calibrate", "--from-traffic", str(recording), "-o", str(output)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(output.read_text())["notes"]["fit_generations"] == 4
