"""Attacks on the embedded engine, against a real gateway process serving the real model on loopback:
sampling values that killed the whole batch, stop strings that stalled everyone, prompts that blocked the
event loop, clients that leave a non-streamed request, a request that names no completion limit.

Each test asserts that the other users' requests complete, that ``/healthz`` answers within 100 ms
throughout (:class:`~tests.hostile.probes.HealthWatch`), and the module ends by checking that memory and
open files come back to their baseline.
"""

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from lab.fakes.processes import Process, gateway_process
from tests.conftest import MODEL, metric, root, wait_for
from tests.hostile.probes import HealthWatch, settles_to

pytestmark = [pytest.mark.hostile, pytest.mark.model]

DEFAULT_MAX_TOKENS = 16
PROMPT = [{"role": "user", "content": "Tell me a short story about a lighthouse."}]
# Issue 19: each of these answered 500 (IndexError or engine_failure), and the first ended every stream
# decoding beside it with the same error.
DEGENERATE = {
    "repetition penalty 1e-40 with logit bias": {
        "top_p": 0.5,
        "repetition_penalty": 1e-40,
        "logit_bias": {"1000": -100, "2000": -100, "3000": 100},
    },
    "temperature 1e-300 with top_p": {"temperature": 1e-300, "top_p": 0.5},
    "top_p 1e-300": {"top_p": 1e-300},
    "every penalty at its bound": {
        "temperature": 2,
        "presence_penalty": -2,
        "frequency_penalty": -2,
        "repetition_penalty": 10,
        "logit_bias": {"0": 100, "1": -100},
    },
}


@pytest.fixture(scope="module")
def gateway() -> Iterator[Process]:
    """One embedded gateway for the module, with a small default completion limit; its baseline resources
    (taken after a warm-up request) are checked again when the module ends."""
    with gateway_process("--max-batch", "8", "--default-max-tokens", str(DEFAULT_MAX_TOKENS)) as process:
        _client(process).chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=4)
        rss, files = process.rss_bytes(), process.open_files()
        yield process
        settles_to(process.open_files, files, slack=8)
        settles_to(process.rss_bytes, rss, slack=256 * 2**20)


def _client(process: Process) -> openai.OpenAI:
    return openai.OpenAI(base_url=process.base_url, api_key="x", max_retries=0, timeout=120)


def _streams_beside(process: Process, count: int, max_tokens: int = 32) -> tuple[list[threading.Thread], dict]:
    """``count`` normal streams started on threads; each one's finish reason lands in the returned dict."""
    finished: dict[int, str | BaseException] = {}

    def stream(i: int) -> None:
        try:
            chunks = _client(process).chat.completions.create(
                model=MODEL, messages=PROMPT, max_tokens=max_tokens, temperature=0.8, seed=i, stream=True
            )
            finished[i] = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
        except Exception as error:  # reported by the assertion on `finished`
            finished[i] = error

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, finished


def _encoded(body: dict) -> bytes:
    """The request body as JSON, encoded before an attack so the test's own threads do not hold the GIL
    (and delay the health probe's measurements) encoding megabytes."""
    return json.dumps({"model": MODEL, **body}).encode()


def _post(process: Process, endpoint: str, body: dict | bytes, timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, bytes) else _encoded(body)
    headers = {"content-type": "application/json"}
    return httpx.post(f"{process.base_url}/{endpoint}", content=content, headers=headers, timeout=timeout)


def test_degenerate_sampling_beside_normal_streams_fails_nobody(gateway):
    server_errors = metric(root(gateway), "sinkwatch_requests_total", outcome="server_error")
    with HealthWatch(root(gateway)) as health:
        threads, finished = _streams_beside(gateway, 4)
        time.sleep(0.5)  # the streams are decoding when the attacks join their batch
        answers = {}
        for name, fields in DEGENERATE.items():
            answers[f"completions: {name}"] = _post(
                gateway, "completions", {"prompt": [1000, 2000], "max_tokens": 8, **fields}
            )
            answers[f"chat: {name}"] = _post(
                gateway, "chat/completions", {"messages": PROMPT, "max_tokens": 8, **fields}
            )
        for thread in threads:
            thread.join(timeout=120)
    assert sorted(finished) == list(range(4)) and set(finished.values()) <= {"stop", "length"}, finished
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json()["choices"][0]["finish_reason"] in ("stop", "length"), name
    assert metric(root(gateway), "sinkwatch_requests_total", outcome="server_error") == server_errors
    health.assert_healthy()


def test_huge_stop_strings_are_refused_and_the_longest_accepted_ones_slow_nobody(gateway):
    """Issue 19: four 300,000-character stop strings took a normal request beside them from 0.5 s to 22-30 s."""
    normal = {"messages": PROMPT, "max_tokens": 24, "temperature": 0}
    started = time.perf_counter()
    assert _post(gateway, "chat/completions", normal).status_code == 200
    alone = time.perf_counter() - started
    huge = _encoded({"prompt": "Once upon a time", "max_tokens": 4, "stop": ["a" * 300_000 + str(i) for i in range(4)]})
    longest = _encoded({"prompt": "Once upon a time", "max_tokens": 64, "stop": [c * 1024 for c in "abcd"]})
    with HealthWatch(root(gateway)) as health, ThreadPoolExecutor(8) as pool:
        attacks = [pool.submit(_post, gateway, "completions", body) for body in (huge, longest) * 4]
        started = time.perf_counter()
        beside = _post(gateway, "chat/completions", normal)
        took = time.perf_counter() - started
        answers = [attack.result() for attack in attacks]
    assert beside.status_code == 200
    assert took < 5 * alone + 10, f"a normal request took {took:.1f} s beside the stop strings ({alone:.1f} s alone)"
    for answer in answers[0::2]:
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "stop"
    for answer in answers[1::2]:
        assert answer.status_code == 200
    health.assert_healthy()


def test_prompts_of_megabytes_are_refused_without_blocking_the_event_loop(gateway):
    """Issue 19: a 3.9 MB prompt blocked /healthz for 3 s (four at once: 12 s) while it was templated and
    tokenized on the event loop."""
    words = "word " * 780_000  # 3.9 MB
    bodies = [
        ("chat/completions", _encoded({"messages": [{"role": "user", "content": words}], "max_tokens": 4})),
        ("completions", _encoded({"prompt": words, "max_tokens": 4})),
    ]
    with HealthWatch(root(gateway)) as health, ThreadPoolExecutor(4) as pool:
        time.sleep(0.2)
        answers = list(pool.map(lambda case: _post(gateway, *case), bodies * 2))
        time.sleep(0.2)
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "context_length_exceeded"
    health.assert_healthy()


def test_a_request_naming_no_limit_stops_at_the_default(gateway):
    """Issue 19: a request without max_tokens decoded up to the context length (2 minutes on a CPU)."""
    answer = _client(gateway).chat.completions.create(model=MODEL, messages=PROMPT, temperature=0.8, seed=1)
    assert answer.usage.completion_tokens <= DEFAULT_MAX_TOKENS


def test_clients_leaving_non_streamed_requests_are_counted_cancelled_never_a_500(gateway):
    """Issue 19: each such disconnect raised ``aclose(): asynchronous generator is already running``, a 500
    counted as a server error."""
    labels = {"endpoint": "chat", "backend": "embedded"}
    cancelled = metric(root(gateway), "sinkwatch_requests_total", outcome="cancelled", **labels)
    body = {"messages": PROMPT, "max_tokens": 400, "temperature": 0.8}
    with HealthWatch(root(gateway)) as health:
        threads, finished = _streams_beside(gateway, 2)
        for _ in range(3):
            with pytest.raises(httpx.ReadTimeout):
                _post(gateway, "chat/completions", body, timeout=1.0)
        for thread in threads:
            thread.join(timeout=120)
    assert set(finished.values()) <= {"stop", "length"}, finished
    wait_for(
        lambda: metric(root(gateway), "sinkwatch_requests_total", outcome="cancelled", **labels) - cancelled == 3,
        timeout=30,
    )
    assert metric(root(gateway), "sinkwatch_requests_total", outcome="server_error") == 0
    assert metric(root(gateway), "sinkwatch_errors_total", type="server_error") == 0
    wait_for(lambda: metric(root(gateway), "sinkwatch_engine_active_requests") == 0, timeout=30)
    health.assert_healthy()
