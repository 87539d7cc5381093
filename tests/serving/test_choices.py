"""The serving path's ``n > 1`` lifecycle on a scripted backend: one generation per choice, every one of them
closed however the request ends."""

import json
from dataclasses import dataclass

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.errors import Overloaded
from gateway.generation import GenerationRequest
from tests.conftest import RunningServer, free_port, metric
from tests.gate.scripted import (
    CALIBRATION,
    MODEL,
    ScriptedBackend,
    ScriptedServing,
    failing_after_three_tokens,
    loop_after,
    token_text,
)

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
        return failing_after_three_tokens(events) if request.request_id.endswith(f"-{self.fail}") else events

    @staticmethod
    async def _refused():
        raise Overloaded("the engine queue is full")
        yield  # an async generator, like every backend's


@dataclass
class OneLoopingChoice(ScriptedServing):
    """Choice 1 falls into a loop at token 10 on its first attempt (its rescues do not); the others never do."""

    calm: ScriptedBackend
    looping: ScriptedBackend

    def generate(self, request: GenerationRequest):
        choice = request.request_id.partition("-rescue")[0]
        return (self.looping if choice.endswith("-1") else self.calm).generate(request)


def one_looping_choice() -> OneLoopingChoice:
    ids, entropy = loop_after(10)
    return OneLoopingChoice(ScriptedBackend([40, 30]), ScriptedBackend([40, 30], ids=ids, entropy=entropy))


@pytest.fixture
def serve():
    """A gateway over a given scripted backend."""
    running = []

    def start(backend: ChoiceBackend) -> RunningServer:
        settings = Settings().replace(port=free_port(), served_model_name=MODEL)
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


def test_under_block_only_the_looping_choice_is_cut_and_each_choice_is_counted(serve):
    server = serve(one_looping_choice())
    labels = {"model": MODEL, "policy": "block"}
    before = {a: metric(server.base_url, "sinkwatch_gate_actions_total", action=a, **labels) for a in ("pass", "block")}
    body = {**BODY, "max_tokens": 40, "n": 2, "sinkwatch": {"policy": "block"}}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30).json()
    calm, looped = response["choices"]
    assert calm["message"]["content"] == "".join(token_text(0, i) for i in range(40))
    assert calm["finish_reason"] == "length" and calm["stability"]["gate"]["action"] == "pass"
    assert looped["message"]["content"] == "".join(token_text(0, i) for i in range(10))
    assert looped["finish_reason"] == "content_filter" and looped["stability"]["gate"]["action"] == "block"
    assert response["stability"]["choice"] == 1 and response["stability"]["verdict"] == "sink"
    after = {a: metric(server.base_url, "sinkwatch_gate_actions_total", action=a, **labels) for a in ("pass", "block")}
    assert {a: after[a] - before[a] for a in after} == {"pass": 1, "block": 1}


def test_under_rescue_the_looping_choice_is_rescued_on_its_own_in_the_stream(serve):
    backend = one_looping_choice()
    server = serve(backend)
    body = {**BODY, "max_tokens": 40, "n": 2, "stream": True, "sinkwatch": {"policy": "rescue"}}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=30) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    texts = {0: "", 1: ""}
    finish = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
            if choice["finish_reason"]:
                finish[choice["index"]] = choice["stability"]["gate"]
    assert texts[0] == "".join(token_text(0, i) for i in range(40))
    kept = "".join(token_text(0, i) for i in range(10))
    assert texts[1] == kept + "".join(token_text(1, i) for i in range(30))
    assert (finish[0]["action"], finish[1]["action"], finish[1]["outcome"]) == ("pass", "rescue", "rescued")
    assert [r.request_id.rpartition("-")[2] for r in backend.looping.requests] == ["1", "rescue1"]
    # the rescued answer's final verdict is ok, like the calm one's: the top-level names the rescued choice
    top = chunks[-1]["stability"]
    assert (top["verdict"], top["choice"], top["gate"]["outcome"]) == ("ok", 1, "rescued")
