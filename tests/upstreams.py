"""A fake OpenAI upstream and gateways proxying to it (fixtures registered in tests/conftest.py)."""

from collections.abc import Iterator
from contextlib import contextmanager

import openai
import pytest

from gateway.config import Settings
from lab.fakes.fake_upstream import FakeUpstreamConfig, FakeUpstreamThread
from tests.conftest import RunningServer, free_port, start_gateway

FAKE_MODEL = "fake-model"
CHAT = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def upstream() -> Iterator[FakeUpstreamThread]:
    """A fake upstream answering 8 tokens, as fast as it can."""
    with FakeUpstreamThread(FakeUpstreamConfig(tokens=8)) as fake:
        yield fake


@contextmanager
def proxy_gateway(upstreams: str, **overrides) -> Iterator[RunningServer]:
    """A gateway with the ``openai`` backend in front of ``upstreams``, ready."""
    settings = Settings().replace(backend="openai", upstreams=upstreams, port=free_port(), **overrides)
    with start_gateway(settings) as server:
        server.wait_ready(timeout=30)
        yield server


@pytest.fixture
def proxy(upstream: FakeUpstreamThread) -> Iterator[RunningServer]:
    """A gateway in front of the fake upstream (health checks every 0.2 s)."""
    with proxy_gateway(upstream.base_url, upstream_health_interval=0.2) as server:
        yield server


def client_of(server: RunningServer, **options) -> openai.OpenAI:
    """The official client pointed at ``server``."""
    defaults = {"api_key": "x", "max_retries": 0, "timeout": 10}
    return openai.OpenAI(base_url=f"{server.base_url}/v1", **{**defaults, **options})
