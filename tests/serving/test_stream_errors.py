"""A stream that fails half way ends with an OpenAI error event and ``[DONE]``, rendered and counted like any
other error, and the failure's traceback is logged."""

import json
import logging
from dataclasses import dataclass

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.generation import GenerationRequest
from tests.conftest import RunningServer, free_port, metric
from tests.gate.scripted import CALIBRATION, MODEL, ScriptedBackend, failing_after_three_tokens

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "stream": True}


@dataclass
class FailingBackend(ScriptedBackend):
    """Three tokens, then an error no layer expected."""

    def generate(self, request: GenerationRequest):
        return failing_after_three_tokens(super().generate(request))


@pytest.fixture
def server():
    settings = Settings().replace(port=free_port(), served_model_name=MODEL)
    app = create_app(settings, backend=FailingBackend([20]), calibration=CALIBRATION)
    with RunningServer(app, settings.port) as running:
        yield running


def test_a_stream_failing_half_way_ends_with_a_counted_error_event(server: RunningServer, caplog) -> None:
    before = metric(server.base_url, "sinkwatch_errors_total", endpoint="chat", type="server_error")
    url = f"{server.base_url}/v1/chat/completions"
    with (
        caplog.at_level(logging.ERROR, logger="gateway.serving.respond"),
        httpx.stream("POST", url, json=BODY, timeout=30) as response,
    ):
        lines = [line for line in response.iter_lines() if line]
    assert response.status_code == 200
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "engine_failure"
    assert "RuntimeError" in error["message"]
    after = metric(server.base_url, "sinkwatch_errors_total", endpoint="chat", type="server_error")
    assert after == before + 1
    failures = [record for record in caplog.records if record.exc_info]
    assert failures and "the device fell over" in str(failures[0].exc_info[1])
