"""Fixtures of the relay tests: a fake vLLM with the plugin's behaviour and a gateway in front of it, both
judging with the scripted calibration (low entropy and text repetition), so a forced loop fires."""

from collections.abc import Iterator

import openai
import pytest

from gateway.app import create_app
from gateway.config import Settings
from monitors.calibration import Calibration
from tests.backends.fake_vllm import FakeVLLM
from tests.conftest import RunningServer, free_port
from tests.gate.scripted import CALIBRATION


@pytest.fixture
def fake() -> Iterator[tuple[FakeVLLM, RunningServer]]:
    """The fake vLLM on loopback, 40 tokens per choice."""
    fake = FakeVLLM(CALIBRATION)
    fake.config.tokens = 40
    with RunningServer(fake.app, free_port()) as server:
        yield fake, server
    fake.close()


def relay_gateway(upstream: RunningServer, calibration: Calibration = CALIBRATION, **settings) -> RunningServer:
    """A gateway with the ``vllm`` backend in front of ``upstream`` (not started)."""
    configured = Settings().replace(
        backend="vllm",
        upstreams=f"{upstream.base_url}/v1",
        upstream_health_interval=0.2,
        vllm_stats_timeout=2.0,
        port=free_port(),
        **settings,
    )
    return RunningServer(create_app(configured, calibration=calibration), configured.port)


@pytest.fixture
def relay_server(fake: tuple[FakeVLLM, RunningServer]) -> Iterator[RunningServer]:
    """A ready gateway in front of the fake (hold-back 3 tokens)."""
    _, upstream = fake
    with relay_gateway(upstream, holdback_tokens=3) as server:
        server.wait_ready(timeout=30)
        yield server


def client_of(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=30)
