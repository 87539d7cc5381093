"""Hundreds of concurrent streams through the proxy (gateway in its own process, fake upstream on loopback):
zero errors, memory that does not grow with time, and no task, request or connection left behind.

The default suite runs 100 streams for 5 s; ``make test-load`` (marker ``load``) runs 500 for 60 s, through
one gateway process and through two workers (``--workers 2``: memory and files are the workers' summed).
"""

import asyncio
import threading
import time

import orjson
import pytest

from lab.bench.loadgen import LoadResult, run_load
from lab.fakes.fake_upstream import FakeUpstreamConfig, FakeUpstreamThread
from lab.fakes.processes import Process, gateway_process
from tests.conftest import metric, root
from tests.upstreams import FAKE_MODEL

STREAM = orjson.dumps(
    {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "Tell me about load."}], "stream": True}
)
MiB = 1 << 20


def _state(gateway: Process) -> dict[str, float]:
    address = root(gateway)
    return {
        "files": gateway.open_files(),
        "tasks": metric(address, "sinkwatch_event_loop_tasks"),
        "in_flight": metric(address, "sinkwatch_requests_in_flight"),
        "upstream_in_flight": metric(address, "sinkwatch_upstream_in_flight"),
        "workers_read": metric(address, "sinkwatch_worker_up"),  # with --workers: whose metrics the sums include
    }


def _sample_memory(gateway: Process, stop: threading.Event, samples: list[int]) -> None:
    while not stop.wait(0.5):
        samples.append(gateway.rss_bytes())


def _load(streams: int, seconds: float, tokens: int, interval: float, workers: int = 1) -> None:
    config = FakeUpstreamConfig(model=FAKE_MODEL, tokens=tokens, token_interval=interval)
    with (
        FakeUpstreamThread(config) as fake,
        gateway_process("--backend", "openai", "--upstreams", fake.base_url, "--workers", str(workers)) as gw,
    ):
        asyncio.run(run_load(gw.base_url, "/chat/completions", STREAM, stream=True, concurrency=8, duration=0.5))
        before, upstream_before = _state(gw), fake.stats.open_connections
        samples: list[int] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_memory, args=(gw, stop, samples))
        sampler.start()
        try:
            result: LoadResult = asyncio.run(
                run_load(gw.base_url, "/chat/completions", STREAM, stream=True, concurrency=streams, duration=seconds)
            )
        finally:
            stop.set()
            sampler.join()
        time.sleep(0.5)
        after, kept_alive = _state(gw), fake.stats.open_connections - upstream_before

    assert result.errors == []
    assert result.requests >= 2 * streams  # every client got through streams back to back
    assert result.tokens == result.requests * tokens
    assert fake.stats.active == 0 and fake.stats.cancelled == 0
    assert before["workers_read"] == after["workers_read"] == (workers if workers > 1 else 0)
    assert after["in_flight"] == after["upstream_in_flight"] == 0
    assert after["tasks"] <= before["tasks"] + 2 * workers
    assert after["files"] - before["files"] <= kept_alive + 4  # idle keep-alive connections to the upstream
    half = len(samples) // 2
    assert max(samples[half:]) - max(samples[:half]) < 32 * MiB, [s // MiB for s in samples]


def test_a_hundred_concurrent_streams_for_five_seconds():
    _load(streams=100, seconds=5, tokens=10, interval=0.02)


@pytest.mark.load
def test_five_hundred_concurrent_streams_for_a_minute():
    _load(streams=500, seconds=60, tokens=20, interval=0.05)


@pytest.mark.load
def test_five_hundred_concurrent_streams_for_a_minute_on_two_workers():
    _load(streams=500, seconds=60, tokens=20, interval=0.05, workers=2)
