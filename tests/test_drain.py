"""Graceful drain on SIGTERM, with real processes and the official client: ``/readyz`` turns 503 while
requests are still served for ``--drain-delay``, then new connections are refused while streams begun
before finish; a stream that outlives ``--shutdown-timeout`` ends with an OpenAI error event and
``[DONE]``. The same through ``--workers 2`` and on the full serving path (the embedded model)."""

import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from lab.fakes.processes import Process, fake_upstream_process, gateway_process
from tests.conftest import metric, root, wait_for
from tests.upstreams import CHAT

TOKENS = 30
TOKEN_INTERVAL = 0.1  # a stream of the fake upstream lasts about 3 s


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[Process]:
    with fake_upstream_process(TOKENS, TOKEN_INTERVAL) as upstream:
        yield upstream


def _gateway(upstream: Process, *flags: str):
    return gateway_process("--backend", "openai", "--upstreams", upstream.base_url, *flags, timeout=60)


def _client(server: Process) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=30)


def _ready_status(server: Process) -> int | None:
    try:
        return httpx.get(f"{root(server)}/readyz", timeout=2).status_code
    except httpx.TransportError:
        return None


class Stream:
    """A chat stream read by the official client in a thread: its text, finish reason or error."""

    def __init__(self, server: Process) -> None:
        self.chunks = _client(server).chat.completions.create(**CHAT, stream=True)
        first = next(self.chunks)  # the stream has begun
        self.text = (first.choices[0].delta.content or "") if first.choices else ""
        self.finish_reason, self.error = None, None
        self._thread = threading.Thread(target=self._read)
        self._thread.start()

    def _read(self) -> None:
        try:
            for chunk in self.chunks:
                if chunk.choices:
                    self.text += chunk.choices[0].delta.content or ""
                    self.finish_reason = chunk.choices[0].finish_reason or self.finish_reason
        except openai.APIError as error:
            self.error = error

    def result(self, timeout: float = 30) -> "Stream":
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        return self


def _exit_status(server: Process, timeout: float = 30) -> int:
    return server.popen.wait(timeout)


def test_a_stream_begun_before_sigterm_completes_while_readyz_says_503_and_new_requests_are_served(slow_upstream):
    with _gateway(slow_upstream, "--drain-delay", "1.5", "--shutdown-timeout", "20") as server:
        stream = Stream(server)
        os.kill(server.pid, signal.SIGTERM)
        wait_for(lambda: _ready_status(server) == 503, timeout=5)
        during_delay = _client(server).chat.completions.create(**CHAT, max_tokens=2)
        assert during_delay.choices[0].message.content
        wait_for(lambda: _ready_status(server) is None, timeout=5)  # past the delay: connections refused
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{server.base_url}/chat/completions", json=CHAT, timeout=2)
        stream.result()
        assert stream.error is None and stream.finish_reason == "stop"
        assert len(stream.text.split()) == TOKENS
        _exit_status(server)


def _raw_stream_lines(server: Process, started: threading.Event, lines: list[str]) -> None:
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json={**CHAT, "stream": True}, timeout=30) as r:
        for line in r.iter_lines():
            started.set()
            if line:
                lines.append(line)


def _ends_with_a_shutdown_error(lines: list[str]) -> None:
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["code"] == "shutting_down" and "shutting down" in error["message"]


def test_a_stream_that_outlives_the_shutdown_timeout_ends_with_an_error_event_and_done(slow_upstream):
    with _gateway(slow_upstream, "--shutdown-timeout", "0.5") as server:
        stream = Stream(server)
        started, lines = threading.Event(), []
        raw = threading.Thread(target=_raw_stream_lines, args=(server, started, lines))
        raw.start()
        assert started.wait(10)
        sent = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        stream.result()
        raw.join(30)
        assert isinstance(stream.error, openai.APIError) and "shutting down" in str(stream.error)
        assert stream.finish_reason is None and len(stream.text.split()) < TOKENS
        _ends_with_a_shutdown_error(lines)
        _exit_status(server)
        assert time.monotonic() - sent < 10  # well before the stream's own end plus uvicorn's last grace


def test_every_worker_drains(slow_upstream):
    with _gateway(slow_upstream, "--workers", "2", "--drain-delay", "1", "--shutdown-timeout", "20") as server:
        streams = [Stream(server) for _ in range(4)]  # each on its own connection: on either worker
        os.kill(server.pid, signal.SIGTERM)
        wait_for(lambda: _ready_status(server) == 503, timeout=5)
        assert _client(server).chat.completions.create(**CHAT, max_tokens=2).choices
        for stream in streams:
            assert stream.result().error is None and stream.finish_reason == "stop"
        assert _exit_status(server) == 0


def test_every_worker_ends_its_streams_at_the_shutdown_timeout(slow_upstream):
    with _gateway(slow_upstream, "--workers", "2", "--shutdown-timeout", "0.5") as server:
        streams = [Stream(server) for _ in range(4)]
        os.kill(server.pid, signal.SIGTERM)
        for stream in streams:
            assert "shutting down" in str(stream.result().error)
        assert _exit_status(server) == 0


@pytest.mark.model
def test_the_embedded_models_stream_and_whole_answer_end_with_errors_at_the_shutdown_timeout():
    # a negative frequency penalty makes greedy decoding loop to max_tokens: minutes, whatever the model says
    long = {"model": "SmolLM2-135M-Instruct", "max_tokens": 2000, "temperature": 0, "frequency_penalty": -2}
    prompt = [{"role": "user", "content": "Write the numbers from one to one hundred in words."}]
    with gateway_process("--shutdown-timeout", "1", timeout=180) as server:
        client = _client(server)
        chunks = client.chat.completions.create(**long, messages=prompt, stream=True)
        next(chunks)
        whole: list[BaseException] = []
        asking = threading.Thread(
            target=_catch, args=(lambda: client.chat.completions.create(**long, messages=prompt), whole)
        )
        asking.start()
        wait_for(lambda: metric(root(server), "sinkwatch_requests_in_flight") == 2, timeout=30)
        os.kill(server.pid, signal.SIGTERM)
        with pytest.raises(openai.APIError, match="shutting down"):
            for _ in chunks:
                pass
        asking.join(30)
        assert isinstance(whole[0], openai.InternalServerError) and whole[0].status_code == 503
        assert whole[0].body["code"] == "shutting_down"
        _exit_status(server)


def _catch(call, caught: list[BaseException]) -> None:
    try:
        call()
    except openai.APIError as error:
        caught.append(error)
