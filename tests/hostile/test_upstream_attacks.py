"""Upstreams that attack the gateway: a model list dripped a header line at a time, a response head that
never ends, a stream of nothing but keepalive comments, a 63 MB answer. Each meets a deadline or a cap
and becomes a counted OpenAI error, while requests for a well-behaved upstream's model are served and
``/healthz`` answers quickly."""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import orjson
import pytest
from openai import OpenAI

from lab.fakes.fake_upstream import FakeUpstreamConfig, FakeUpstreamThread
from lab.fakes.processes import Process, fake_upstream_process, gateway_process
from tests.conftest import metric, root, wait_for
from tests.hostile.hostile_upstream import (
    HUGE_BYTES,
    Behaviour,
    HostileProcess,
    HostileUpstream,
    hostile_upstream_process,
)
from tests.hostile.probes import HealthWatch, settles_to

pytestmark = pytest.mark.hostile

GOOD_MODEL = "good-model"
READ_TIMEOUT = 2.0
EVENT_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def hostile() -> Iterator[dict[Behaviour, HostileProcess]]:
    """One upstream of each misbehaviour that generation requests meet, each in its own process."""
    kinds = (Behaviour.ENDLESS_HEAD, Behaviour.KEEPALIVE_ONLY, Behaviour.HUGE_BODY)
    with ExitStack() as stack:
        yield {kind: stack.enter_context(hostile_upstream_process(kind)) for kind in kinds}


@pytest.fixture(scope="module")
def gateway(hostile: dict[Behaviour, HostileProcess]) -> Iterator[Process]:
    """A proxying gateway in front of the hostile upstreams and a good one (its own model), deadlines lowered."""
    with fake_upstream_process(tokens=8, model=GOOD_MODEL) as good:
        spec = ",".join([f"{kind.value}={upstream.base_url}" for kind, upstream in hostile.items()])
        flags = ["--backend", "openai", "--upstreams", f"{spec},good={good.base_url}"]
        flags += ["--upstream-read-timeout", str(READ_TIMEOUT), "--upstream-event-timeout", str(EVENT_TIMEOUT)]
        with gateway_process(*flags, timeout=60) as process:
            yield process


def _client(process: Process) -> OpenAI:
    return OpenAI(base_url=process.base_url, api_key="x", max_retries=0, timeout=30)


def _chat(model: str, stream: bool = False) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def _others_served(process: Process, attack, count: int = 5) -> object:
    """Run ``attack`` while ``count`` requests for the good model are served, all the while ``/healthz``
    answers quickly; the attack's result."""
    client = _client(process)
    with HealthWatch(root(process)) as watch, ThreadPoolExecutor(1) as pool:
        running = pool.submit(attack)
        for _ in range(count):
            answer = client.chat.completions.create(**_chat(GOOD_MODEL))
            assert answer.choices[0].message.content
        result = running.result(timeout=60)
    watch.assert_healthy()
    return result


def _timeouts(process: Process, upstream: str) -> float:
    return metric(root(process), "sinkwatch_upstream_errors_total", upstream=upstream, kind="timeout")


def test_an_endless_response_head_is_a_counted_504_at_the_read_deadline(gateway: Process):
    before = _timeouts(gateway, Behaviour.ENDLESS_HEAD.value)

    def attack() -> list[httpx.Response]:
        with httpx.Client(timeout=30) as client:
            return [
                client.post(f"{gateway.base_url}/chat/completions", json=_chat(Behaviour.ENDLESS_HEAD.value, stream))
                for stream in (False, True)
            ]

    for answer in _others_served(gateway, attack):
        assert answer.status_code == 504
        assert answer.json()["error"]["code"] == "upstream_timeout"
        assert answer.elapsed.total_seconds() < READ_TIMEOUT + 5
    assert _timeouts(gateway, Behaviour.ENDLESS_HEAD.value) == before + 2


def test_a_stream_of_keepalive_comments_meets_the_event_deadline(gateway: Process):
    before = _timeouts(gateway, Behaviour.KEEPALIVE_ONLY.value)

    def attack() -> tuple[list[bytes], float]:
        started = time.monotonic()
        body = _chat(Behaviour.KEEPALIVE_ONLY.value, stream=True)
        with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=body, timeout=30) as answer:
            assert answer.status_code == 200
            events = [line for line in answer.iter_lines() if line]
        return events, time.monotonic() - started

    events, took = _others_served(gateway, attack)
    assert events[-1] == "data: [DONE]"
    error = orjson.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_timeout" and "no event" in error["message"]
    assert took < EVENT_TIMEOUT + 5
    assert _timeouts(gateway, Behaviour.KEEPALIVE_ONLY.value) == before + 1


def test_a_63_mb_answer_is_refused_at_the_cap_without_being_buffered(
    gateway: Process, hostile: dict[Behaviour, HostileProcess]
):
    huge = hostile[Behaviour.HUGE_BODY]
    baseline = gateway.rss_bytes()

    def attack() -> list[httpx.Response]:
        with httpx.Client(timeout=30) as client:
            return [
                client.post(f"{gateway.base_url}/chat/completions", json=_chat(Behaviour.HUGE_BODY.value))
                for _ in range(3)
            ]

    for answer in _others_served(gateway, attack):
        assert answer.status_code == 502
        error = answer.json()["error"]
        assert error["code"] == "upstream_malformed" and "larger than" in error["message"]
    assert huge.sent_bytes() < 3 * HUGE_BYTES / 2  # each answer was cut off at the 16 MiB cap
    errors = metric(root(gateway), "sinkwatch_upstream_errors_total", upstream="huge_body", kind="malformed")
    assert errors >= 3
    settles_to(gateway.rss_bytes, baseline, slack=48 << 20)


def test_an_upstream_dripping_its_model_list_holds_up_no_other_upstream():
    """The health loop: one upstream's check that never ends neither freezes the checks of another (a good
    upstream that restarts is marked up again) nor takes longer than its deadline."""
    config = FakeUpstreamConfig(model=GOOD_MODEL, tokens=4)
    with HostileUpstream(Behaviour.DRIP_MODELS, interval=0.2) as drip, FakeUpstreamThread(config) as good:
        port = good.server.port
        flags = ["--backend", "openai", "--upstreams", f"drip={drip.base_url},good={good.base_url}"]
        flags += ["--upstream-health-interval", "0.2", "--upstream-health-timeout", "1"]
        with gateway_process(*flags, timeout=60) as process, HealthWatch(root(process)) as watch:
            client = _client(process)

            def up(name: str) -> float:
                return metric(root(process), "sinkwatch_upstream_up", upstream=name)

            assert client.chat.completions.create(**_chat(GOOD_MODEL)).choices[0].message.content
            good.stop()
            wait_for(lambda: up("good") == 0, timeout=10, poll=0.1)
            with FakeUpstreamThread(config, port=port):
                wait_for(lambda: up("good") == 1, timeout=10, poll=0.1)
                assert client.chat.completions.create(**_chat(GOOD_MODEL)).choices[0].message.content
            assert up("drip") == 0
        watch.assert_healthy()
