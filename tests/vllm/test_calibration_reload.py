"""The plugin takes a new calibration file without a restart of vLLM: requests that start after the file
changed are reduced with its reference (their features carry its profile, so a gateway still on the old
file drops them, and one started with the new file monitors them), against a real vLLM."""

from dataclasses import replace

import openai
import pytest

from gateway.config import Settings
from gateway.engine.provision import provision
from lab.bench.vllm_server import VLLMServer
from monitors.calibration import load_calibration
from tests.backends.fake_vllm import MODEL
from tests.conftest import free_port, start_gateway, wait_for
from tests.vllm.conftest import KV_BYTES_PER_TOKEN, KV_TOKENS

pytestmark = pytest.mark.vllm

QUESTION = [{"role": "user", "content": "Name three colours."}]


def _monitored_tokens(settings: Settings) -> int:
    with start_gateway(settings) as gateway:
        gateway.wait_ready(timeout=60)
        client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="x", max_retries=0, timeout=300)
        answer = client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=16, temperature=0, extra_body={"ignore_eos": True}
        )
    return answer.model_extra["stability"]["tokens_monitored"]


def test_a_new_calibration_file_is_taken_for_new_requests(tmp_path):
    calibration_file = tmp_path / "calibration.json"
    shipped = load_calibration(MODEL)
    calibration_file.write_text(shipped.to_json())
    log = tmp_path / "vllm.log"
    server = VLLMServer(
        model_dir=provision(MODEL),
        served_name=MODEL,
        log_path=log,
        dtype="float32",
        max_model_len=512,
        kv_cache_gib=None,
        extra_args=("--kv-cache-memory-bytes", str(KV_TOKENS * KV_BYTES_PER_TOKEN)),
        env={"SINKWATCH_CALIBRATION": str(calibration_file)},
    )
    with server:
        settings = Settings().replace(
            backend="vllm", upstreams=server.url, calibration=str(calibration_file), vllm_stats_timeout=0.5
        )
        assert _monitored_tokens(settings.replace(port=free_port())) == 16
        other_reference = replace(
            shipped, outlier_dims={layer: dims[:1] for layer, dims in shipped.outlier_dims.items()}
        )
        calibration_file.write_text(other_reference.to_json())
        wait_for(lambda: "in force for new requests" in log.read_text(), timeout=30, poll=0.5)
        # A gateway started before the change would still compare with the old profile; one started now
        # with the new file reads the features the plugin now computes.
        old_file = tmp_path / "old.json"
        old_file.write_text(shipped.to_json())
        assert _monitored_tokens(settings.replace(port=free_port(), calibration=str(old_file))) == 0
        assert _monitored_tokens(settings.replace(port=free_port())) == 16
