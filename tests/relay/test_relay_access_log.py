"""A relayed request's access line says what a served generation's says: model, tokens, verdict, gate action;
an unmonitored one says so."""

from collections.abc import Iterator

import httpx
import pytest

from monitors.calibration import load_calibration
from tests.backends.fake_vllm import MODEL, FakeVLLM
from tests.conftest import RunningServer, free_port
from tests.telemetry.test_logs import logged_gateway

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fake_vllm() -> Iterator[RunningServer]:
    fake = FakeVLLM(load_calibration(MODEL))
    fake.config.tokens = 6
    with RunningServer(fake.app, free_port()) as server:
        yield server
    fake.close()


def test_relayed_requests_have_their_verdict_and_tokens_on_the_access_line(tmp_path, fake_vllm):
    flags = ("--backend", "vllm", "--upstreams", f"{fake_vllm.base_url}/v1", "--log-format", "json")
    with logged_gateway(tmp_path, *flags) as server:
        body = {"model": MODEL, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
        chat = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"x-request-id": "relay-1"})
        embedded = httpx.post(
            f"{server.url}/v1/embeddings", json={"model": MODEL, "input": "hi"}, headers={"x-request-id": "relay-2"}
        )
        assert chat.status_code == embedded.status_code == 200
        line, marked = server.access("relay-1"), server.access("relay-2")
    assert (line["model"], line["verdict"], line["gate_action"]) == (MODEL, "ok", "annotate")
    assert (line["tokens_in"], line["tokens_out"]) == (5, 6) and line["ttft_s"] is not None
    assert marked["verdict"] == "unmonitored"
