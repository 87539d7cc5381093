"""The serving path's ``n > 1`` lifecycle on a scripted backend: one generation per choice, every one of them
closed however the request ends."""

import json
from contextlib import aclosing
from dataclasses import dataclass, replace

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.errors import Overloaded
from gateway.generation import GenerationRequest
from tests.conftest import RunningServer, free_port
from tests.gate.scripted import CALIBRATION, MODEL, ScriptedBackend

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "seed": 5}


@dataclass
class ChoiceBackend(ScriptedBackend):
    """Scripted generations; the choice ``fail`` raises after three tokens, the choice ``refuse`` is refused."""

    fail: str | None = None
    refuse: str | None = None

    def generate(self, request: GenerationRequest):
        if request.request_id.endswith(f"-{self.refuse}"):
            return self._refused()
        events = super().generate(request)
        return self._fail_after(events) if request.request_id.endswith(f"-{self.fail}") else events

    @staticmethod
    async def _refused():
        raise Overloaded("the engine queue is full")
        yield  # an async generator, like every backend's

    @staticmethod
    async def _fail_after(events):
        async with aclosing(events):
            count = 0
            async for event in events:
                yield event
                count += 1
                if count == 4:  # the start event and three tokens
                    raise RuntimeError("the device fell over")


@pytest.fixture
def serve():
    """A gateway over a given scripted backend."""
    running = []

    def start(backend: ChoiceBackend) -> RunningServer:
        settings = replace(Settings(), port=free_port(), served_model_name=MODEL)
        server = RunningServer(create_app(settings, backend=backend, calibration=CALIBRATION), settings.port)
        running.append(server.__enter__())
        return server

    yield start
    for server in running:
        server.__exit__(None, None, None)


def test_each_choice_is_a_generation_of_its_own_seed_and_report(serve):
    backend = ChoiceBackend([6])
    server = serve(backend)
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={**BODY, "n": 3}, timeout=30).json()
    assert [request.sampling.seed for request in backend.requests] == [5, 6, 7]
    assert len({request.request_id for request in backend.requests}) == 3
    assert [choice["index"] for choice in response["choices"]] == [0, 1, 2]
    assert all(choice["stability"]["tokens_monitored"] == 6 for choice in response["choices"])
    assert response["usage"] == {"prompt_tokens": 10, "completion_tokens": 18, "total_tokens": 28}
    assert backend.closed == 3


def test_a_choice_failing_mid_stream_ends_the_stream_and_closes_the_others(serve):
    backend = ChoiceBackend([200], fail="1")
    server = serve(backend)
    url = f"{server.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json={**BODY, "n": 2, "max_tokens": 200, "stream": True}, timeout=30) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2].removeprefix("data: "))["error"]["code"] == "engine_failure"
    assert backend.closed == 2


def test_a_refused_choice_refuses_the_request_and_closes_the_started_ones(serve):
    backend = ChoiceBackend([6], refuse="2")
    server = serve(backend)
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={**BODY, "n": 3}, timeout=30)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "queue_full"
    assert backend.closed == 2  # both choices that had started
