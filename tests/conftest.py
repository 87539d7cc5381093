"""Shared fixtures: the real embedded model, a real gateway on a loopback port, the official client."""

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gateway.config import Settings
from lab.fakes.processes import Process, free_port

MODEL = "SmolLM2-135M-Instruct"


class RunningServer:
    """A uvicorn server on a background thread, for tests that need real HTTP: a gateway app on the gateway's
    own edge protocol, any other app (a fake upstream) on uvicorn's default."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        from gateway.server import http_protocol

        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        http = http_protocol(app) if hasattr(app.state, "serving") else "auto"
        options = {"log_level": "warning", "access_log": False, "http": http}
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "RunningServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        """Block until ``/readyz`` answers 200 (the model is loaded)."""
        import httpx

        deadline = time.monotonic() + timeout
        while httpx.get(f"{self.base_url}/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not become ready")
            time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def samples(base_url: str, name: str, timeout: float = 5) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name`` scraped from ``base_url/metrics``: (labels, value)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=timeout).text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def metric(base_url: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``, scraped from ``base_url/metrics``."""
    wanted = set(labels.items())
    return sum(value for sample_labels, value in samples(base_url, name) if wanted <= set(sample_labels.items()))


def root(process: Process) -> str:
    """The address of a server process started by :mod:`lab.fakes.processes` (its API base without ``/v1``)."""
    return process.base_url.removesuffix("/v1")


def wait_for(condition: Callable[[], bool], timeout: float = 5, poll: float = 0.02) -> None:
    """Poll ``condition`` every ``poll`` seconds until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(poll)


def start_gateway(settings: Settings) -> RunningServer:
    """Create the app for ``settings`` and serve it on a free loopback port."""
    from gateway.app import create_app

    return RunningServer(create_app(settings), settings.port)


@pytest.fixture(scope="session")
def gateway_settings() -> Settings:
    """Settings of the shared embedded gateway."""
    return Settings().replace(port=free_port(), max_batch=8, max_queue=16)


@pytest.fixture(scope="session")
def gateway(gateway_settings: Settings) -> Iterator[RunningServer]:
    """One real gateway serving the real embedded model for the whole session."""
    with start_gateway(gateway_settings) as server:
        server.wait_ready()
        yield server


@pytest.fixture(scope="session")
def calibration():
    """The calibration shipped for the default model."""
    from monitors.calibration import load_calibration

    return load_calibration(MODEL)


@pytest.fixture(scope="session")
def loaded_model():
    """The real embedded model, loaded once for tests that run it directly (offline tools, monitors)."""
    from gateway.engine.loader import load_model
    from gateway.engine.provision import provision

    return load_model(provision(MODEL), MODEL)


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio, the loop the gateway serves with."""
    return "asyncio"


@pytest.fixture
def client(gateway: RunningServer):
    """The official openai client pointed at the gateway (any api key works without auth configured)."""
    from openai import OpenAI

    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key="test-key", max_retries=0, timeout=120)


# Fixtures of a fake OpenAI upstream and a gateway proxying to it (after the helpers they use).
from tests.upstreams import proxy, upstream  # noqa: E402, F401
