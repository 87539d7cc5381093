"""Every worker's metrics in one scrape, read from real unix sockets (gateway/workers/exposition.py)."""

import asyncio
import threading
import time
import uuid
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from gateway.workers.exposition import WorkerExpositions, serve_exposition

# As gateway/metrics.py does in every worker: no ``*_created`` series.
disable_created_metrics()

TIMEOUT = 1.0  # long enough for a loaded machine; stuck workers cost one of it in all, not one each
T = TypeVar("T")


class Loop:
    """An asyncio event loop on a background thread, serving unix sockets like a worker would."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.AbstractServer] = []

    def run(self, coroutine: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=5)

    def serve(self, path: Path, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]):
        self.servers.append(self.run(asyncio.start_unix_server(handler, path=path)))

    def serve_bytes(self, path: Path, body: bytes) -> None:
        async def send(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(body)
            await writer.drain()
            writer.close()

        self.serve(path, send)

    def serve_silence(self, path: Path) -> None:
        """Accept, then say nothing until the peer hangs up."""

        async def wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            writer.close()

        self.serve(path, wait)

    def serve_trickle(self, path: Path) -> None:
        """Send a comment line now and then, never ending the exposition."""

        async def trickle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    writer.write(b"# still here\n")
                    await writer.drain()
                    await asyncio.sleep(TIMEOUT / 5)
            except ConnectionError:
                writer.close()

        self.serve(path, trickle)

    def close(self) -> None:
        for server in self.servers:
            server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


def _registry(requests: float, latencies: list[float], in_flight: float, version: str) -> CollectorRegistry:
    """A worker's registry: a counter, a labelled histogram, a gauge and an info metric."""
    registry = CollectorRegistry()
    Counter("sinkwatch_test_requests", "Requests", ["outcome"], registry=registry).labels("ok").inc(requests)
    duration = Histogram(
        "sinkwatch_test_duration_seconds", "Duration", ["endpoint"], buckets=(0.1, 1), registry=registry
    )
    for latency in latencies:
        duration.labels("chat").observe(latency)
    Gauge("sinkwatch_test_in_flight", "In flight", registry=registry).set(in_flight)
    Info("sinkwatch_test_build", "Build", registry=registry).info({"version": version})
    return registry


WORKERS = [_registry(3, [0.05, 0.5], 1, "1.0"), _registry(5, [2.0], 0, "1.1")]


def _serve_workers(loop: Loop, tmp_path: Path) -> list[Path]:
    paths = [tmp_path / f"w{index}.sock" for index in range(len(WORKERS))]
    for path, registry in zip(paths, WORKERS, strict=True):
        loop.serve_bytes(path, generate_latest(registry))
    return paths


def _samples(families: list[Metric], worker: str) -> set[tuple[str, tuple, float]]:
    """Every sample of ``worker`` (without its worker label), as (name, labels, value)."""
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "worker")), s.value)
        for family in families
        for s in family.samples
        if s.labels.get("worker", worker) == worker and family.name != "sinkwatch_worker_up"
    }


def _up(families: list[Metric]) -> dict[str, float]:
    (up,) = [family for family in families if family.name == "sinkwatch_worker_up"]
    return {sample.labels["worker"]: sample.value for sample in up.samples}


def _own(registry: CollectorRegistry) -> set[tuple[str, tuple, float]]:
    return _samples(list(text_string_to_metric_families(generate_latest(registry).decode())), "")


def test_families_are_merged_with_each_worker_s_samples_labelled(loop, tmp_path):
    families = list(WorkerExpositions(_serve_workers(loop, tmp_path), timeout=TIMEOUT).collect())

    by_name = {family.name: family for family in families}
    assert len(by_name) == len(families)
    requests = by_name["sinkwatch_test_requests"]
    assert requests.type == "counter"
    assert {(s.name, s.labels["worker"], s.labels["outcome"], s.value) for s in requests.samples} == {
        ("sinkwatch_test_requests_total", "0", "ok", 3),
        ("sinkwatch_test_requests_total", "1", "ok", 5),
    }
    duration = by_name["sinkwatch_test_duration_seconds"]
    assert duration.type == "histogram"
    assert {(s.name, s.labels["worker"], s.labels.get("le"), s.value) for s in duration.samples} >= {
        ("sinkwatch_test_duration_seconds_bucket", "0", "0.1", 1),
        ("sinkwatch_test_duration_seconds_bucket", "0", "+Inf", 2),
        ("sinkwatch_test_duration_seconds_count", "0", None, 2),
        ("sinkwatch_test_duration_seconds_bucket", "1", "1.0", 0),
        ("sinkwatch_test_duration_seconds_sum", "1", None, 2.0),
    }
    assert {(s.labels["worker"], s.labels["version"]) for s in by_name["sinkwatch_test_build_info"].samples} == {
        ("0", "1.0"),
        ("1", "1.1"),
    }
    assert _up(families) == {"0": 1, "1": 1}
    for index, registry in enumerate(WORKERS):
        assert _samples(families, str(index)) == _own(registry)


def test_render_has_one_help_and_type_per_family_and_parses_again(loop, tmp_path):
    text = WorkerExpositions(_serve_workers(loop, tmp_path), timeout=TIMEOUT).render().decode()

    for kind in ("HELP", "TYPE"):
        names = Tally(line.split()[2] for line in text.splitlines() if line.startswith(f"# {kind} "))
        assert names and max(names.values()) == 1
    assert "# TYPE sinkwatch_test_requests_total counter" in text
    assert "# TYPE sinkwatch_test_duration_seconds histogram" in text
    assert "# TYPE sinkwatch_test_build_info gauge" in text
    assert "# TYPE sinkwatch_worker_up gauge" in text
    families = list(text_string_to_metric_families(text))
    for index, registry in enumerate(WORKERS):
        assert _samples(families, str(index)) == _own(registry)
    assert _up(families) == {"0": 1, "1": 1}


def test_openmetrics_rendering_parses_again(loop, tmp_path):
    """The supervisor's start_http_server answers in OpenMetrics when Prometheus asks for it."""
    text = generate_openmetrics(WorkerExpositions(_serve_workers(loop, tmp_path), timeout=TIMEOUT)).decode()

    families = list(parse_openmetrics(text))
    assert {(family.name, family.type) for family in families} >= {
        ("sinkwatch_test_requests", "counter"),
        ("sinkwatch_test_duration_seconds", "histogram"),
        ("sinkwatch_test_build_info", "gauge"),
        ("sinkwatch_worker_up", "gauge"),
    }
    for index, registry in enumerate(WORKERS):
        assert _samples(families, str(index)) == _own(registry)
    assert _up(families) == {"0": 1, "1": 1}


def test_a_missing_socket_is_a_worker_down_and_the_others_still_come_through(loop, tmp_path):
    served = _serve_workers(loop, tmp_path)
    families = list(WorkerExpositions([served[0], tmp_path / "gone.sock"], timeout=TIMEOUT).collect())

    assert _up(families) == {"0": 1, "1": 0}
    assert _samples(families, "0") == _own(WORKERS[0])
    assert not any(
        s.labels.get("worker") == "1" for f in families if f.name != "sinkwatch_worker_up" for s in f.samples
    )


@pytest.mark.parametrize(
    "body",
    [b"not a metric {{{\n", generate_latest(WORKERS[1])[:-3], b""],
    ids=["garbled", "cut short", "empty"],
)
def test_an_unreadable_exposition_is_a_worker_down(loop, tmp_path, body):
    served = _serve_workers(loop, tmp_path)
    loop.serve_bytes(tmp_path / "bad.sock", body)
    families = list(WorkerExpositions([served[0], tmp_path / "bad.sock"], timeout=TIMEOUT).collect())

    assert _up(families) == {"0": 1, "1": 0}
    assert _samples(families, "0") == _own(WORKERS[0])


def test_stuck_workers_are_given_up_together_after_one_timeout(loop, tmp_path):
    served = _serve_workers(loop, tmp_path)
    loop.serve_silence(tmp_path / "silent.sock")
    loop.serve_trickle(tmp_path / "trickle.sock")
    paths = [tmp_path / "silent.sock", served[1], tmp_path / "trickle.sock"]

    started = time.monotonic()
    families = list(WorkerExpositions(paths, timeout=TIMEOUT).collect())
    elapsed = time.monotonic() - started

    assert TIMEOUT <= elapsed < 1.7 * TIMEOUT
    assert _up(families) == {"0": 0, "1": 1, "2": 0}
    assert _samples(families, "1") == _own(WORKERS[1])


def test_serve_exposition_serves_the_default_registry_replacing_a_stale_file(loop, tmp_path):
    name = f"sinkwatch_test_exposition_{uuid.uuid4().hex}"
    counter = Counter(name, "A metric of this test only")
    counter.inc(7)
    path = tmp_path / "worker.sock"
    path.write_text("left by a dead worker")
    try:
        loop.servers.append(loop.run(serve_exposition(path)))
        families = list(WorkerExpositions([path], timeout=TIMEOUT).collect())
    finally:
        REGISTRY.unregister(counter)

    (family,) = [family for family in families if family.name == name]
    assert [(s.name, s.labels, s.value) for s in family.samples] == [(f"{name}_total", {"worker": "0"}, 7)]
    assert _up(families) == {"0": 1}


def test_render_from_a_worker_s_own_event_loop_reads_its_own_socket(loop, tmp_path):
    """A worker renders in a thread while its loop keeps serving its own exposition."""
    other = _serve_workers(loop, tmp_path)[1]
    own = tmp_path / "own.sock"

    async def scrape() -> bytes:
        server = await serve_exposition(own)
        async with server:
            return await asyncio.to_thread(WorkerExpositions([own, other], timeout=TIMEOUT).render)

    families = list(text_string_to_metric_families(asyncio.run(scrape()).decode()))
    assert _up(families) == {"0": 1, "1": 1}
    assert any(f.name == "python_info" and s.labels["worker"] == "0" for f in families for s in f.samples)
