"""Fixtures of the vllm backend tests: a fake vLLM with the plugin's behaviour, and a gateway in front of it."""

from collections.abc import Iterator

import pytest

from gateway.config import Settings
from monitors.calibration import Calibration
from tests.backends.fake_vllm import FakeVLLM
from tests.conftest import RunningServer, free_port, start_gateway


@pytest.fixture
def fake_vllm(calibration: Calibration) -> Iterator[tuple[FakeVLLM, RunningServer]]:
    """The fake vLLM server, listening on loopback."""
    fake = FakeVLLM(calibration)
    with RunningServer(fake.app, free_port()) as server:
        yield fake, server
    fake.close()


@pytest.fixture
def vllm_gateway(fake_vllm: tuple[FakeVLLM, RunningServer]) -> Iterator[RunningServer]:
    """A gateway with the ``vllm`` backend in front of the fake (features wait at most 0.5 s)."""
    _, upstream = fake_vllm
    settings = Settings().replace(
        backend="vllm",
        upstreams=f"{upstream.base_url}/v1",
        upstream_health_interval=0.2,
        vllm_stats_timeout=0.5,
        port=free_port(),
    )
    with start_gateway(settings) as server:
        server.wait_ready(timeout=30)
        yield server
