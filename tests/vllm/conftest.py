"""Fixtures of the integration tests against a real vLLM server with the plugin, and a gateway in front of it.

Tests marked ``vllm`` start a real vLLM server (minutes on CPU); they run only when selected with
``-m vllm`` (``make test-vllm``), never as part of the default suite.
"""

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.engine.provision import provision
from lab.bench.vllm_server import VLLMServer
from monitors.calibration import Calibration, rank_overlay_path, shipped_calibration_path
from tests.backends.fake_vllm import MODEL
from tests.conftest import RunningServer, free_port, start_gateway


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "vllm" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="starts a real vLLM server: run with -m vllm (make test-vllm)")
    for item in items:
        if item.get_closest_marker("vllm") is not None:
            item.add_marker(skip)


# The real server: float32 like the embedded engine, so that the two can be compared closely. Prefill
# chunks of at most 256 tokens make the long prompt prefill in two steps; a KV cache of 20 blocks of 32
# tokens (about 600 usable) is too small for the concurrent requests, so vLLM preempts some of them.
# Automatic tool choice with the hermes parser lets the relay tests send tools (``tool_choice: "required"``
# is forced through structured output, even for SmolLM2); it changes nothing for requests without tools.
KV_TOKENS = 660
KV_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 4  # layers x (K, V) x KV heads x head size x float32
TOOL_ARGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[VLLMServer]:
    """A real vLLM server with the plugin, on CPU (minutes to start; ``out/test-vllm/vllm.log``)."""
    server = VLLMServer(
        model_dir=provision(MODEL),
        served_name=MODEL,
        log_path=Path("out/test-vllm/vllm.log"),
        dtype="float32",
        max_model_len=512,
        kv_cache_gib=None,
        extra_args=(
            "--max-num-batched-tokens",
            "256",
            "--block-size",
            "32",
            "--kv-cache-memory-bytes",
            str(KV_TOKENS * KV_BYTES_PER_TOKEN),
            *TOOL_ARGS,
        ),
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def real_vllm_gateway(vllm_server: VLLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A gateway with the ``vllm`` backend in front of the real server, judging with the shipped calibration
    less its prefill alarm: these tests force loops with strong inducers to check where the detector cuts
    them, and the alarm would block such requests before their first token (tests/gate/test_prefill_risk.py
    covers the alarm). The prefill risk is still computed and reported."""
    shipped = Calibration.from_json(shipped_calibration_path(MODEL).read_text())
    path = tmp_path_factory.mktemp("calibration") / "calibration.json"
    path.write_text(replace(shipped, prefill_probe=replace(shipped.prefill_probe, alarm_level=None)).to_json())
    rank_overlay_path(path).write_text(rank_overlay_path(shipped_calibration_path(MODEL)).read_text())
    settings = Settings().replace(backend="vllm", upstreams=vllm_server.url, port=free_port(), calibration=str(path))
    with start_gateway(settings) as server:
        server.wait_ready(timeout=60)
        yield server
