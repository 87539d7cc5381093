"""Many clients at once: streams finish together, health stays responsive, disconnects free slots."""

import re
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import MODEL, free_port, metric, start_gateway, wait_for

PROMPT = [{"role": "user", "content": "Tell me a short story about a lighthouse."}]


def _active_requests(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    return float(re.search(r"^sinkwatch_engine_active_requests (\S+)$", text, re.M).group(1))


def test_eight_streams_finish_while_healthz_answers(client, gateway):
    results: dict[int, str] = {}

    def stream(i: int) -> None:
        chunks = client.chat.completions.create(
            model=MODEL, messages=PROMPT, max_tokens=24, temperature=0.8, seed=i, stream=True
        )
        results[i] = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    health_checks = 0
    while any(t.is_alive() for t in threads):
        # a liveness check, not a benchmark: the event loop must answer while the engine decodes
        assert httpx.get(f"{gateway.base_url}/healthz", timeout=2.0).status_code == 200
        health_checks += 1
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert sorted(results) == list(range(8))
    assert set(results.values()) <= {"stop", "length"}
    assert health_checks > 0


def test_disconnecting_client_frees_its_slot(gateway):
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 1000, "temperature": 0.8, "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        assert _active_requests(gateway.base_url) >= 1
    deadline = time.monotonic() + 10
    while _active_requests(gateway.base_url) > 0:
        assert time.monotonic() < deadline, "the engine kept decoding for a client that left"
        time.sleep(0.05)


def test_disconnecting_non_streaming_client_frees_its_slot_and_counts_as_cancelled(gateway):
    """Issue 19: leaving a non-streamed request raised ``aclose(): asynchronous generator is already running``,
    answered 500 and counted as a server error."""
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 1000, "temperature": 0.8}
    labels = {"endpoint": "chat", "backend": "embedded"}
    cancelled = metric(gateway.base_url, "sinkwatch_requests_total", outcome="cancelled", **labels)
    server_errors = metric(gateway.base_url, "sinkwatch_requests_total", outcome="server_error", **labels)
    errors = metric(gateway.base_url, "sinkwatch_errors_total", endpoint="chat", type="server_error")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=1.5)
    deadline = time.monotonic() + 10
    while _active_requests(gateway.base_url) > 0:
        assert time.monotonic() < deadline, "the engine kept decoding for a client that left"
        time.sleep(0.05)
    wait_for(lambda: metric(gateway.base_url, "sinkwatch_requests_total", outcome="cancelled", **labels) > cancelled)
    assert metric(gateway.base_url, "sinkwatch_requests_total", outcome="server_error", **labels) == server_errors
    assert metric(gateway.base_url, "sinkwatch_errors_total", endpoint="chat", type="server_error") == errors


def test_full_queue_answers_429_in_openai_format(gateway_settings):
    settings = gateway_settings.replace(port=free_port(), max_batch=1, max_queue=1)
    with start_gateway(settings) as server:
        server.wait_ready()
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        outcomes: list[object] = []

        def call() -> None:
            try:
                outcomes.append(client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=40))
            except openai.RateLimitError as refused:
                outcomes.append(refused)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    assert refused, "a full queue must refuse"
    assert refused[0].body["code"] == "queue_full"
    assert len(outcomes) == 4
