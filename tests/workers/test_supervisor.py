"""``sinkwatch serve --workers 2`` as a user runs it: one port, the official client, one set of metrics,
one rate limit per key, a worker that dies started again, a signal that stops them all."""

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from gateway.workers.supervisor import Supervisor
from lab.fakes.fake_upstream import FakeUpstreamConfig, FakeUpstreamThread
from lab.fakes.processes import Process, children, free_port, gateway_process, proc_file
from tests import conftest
from tests.conftest import root, samples
from tests.upstreams import CHAT, FAKE_MODEL

WORKERS = 2
SHIPPED_CALIBRATION = Path(__file__).resolve().parents[2] / "monitors" / "calibrations" / "smollm2-135m-instruct.json"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreamThread]:
    with FakeUpstreamThread(FakeUpstreamConfig(tokens=4)) as fake:
        yield fake


def by_worker(base_url: str, name: str) -> dict[str, float]:
    """``name`` summed per ``worker`` label."""
    totals: dict[str, float] = {}
    for labels, value in samples(base_url, name, timeout=10):
        totals[labels["worker"]] = totals.get(labels["worker"], 0.0) + value
    return totals


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    """:func:`tests.conftest.wait_for`, at the pace of a scrape of every worker."""
    conftest.wait_for(condition, timeout, poll=0.2)


def all_workers_ready(server_root: str) -> bool:
    """Every worker answers its metrics and sees the upstream up."""
    try:
        up = by_worker(server_root, "sinkwatch_upstream_up")
        scraped = by_worker(server_root, "sinkwatch_worker_up")
    except httpx.HTTPError:
        return False
    return len(scraped) == WORKERS and all(scraped.values()) and len(up) == WORKERS and all(up.values())


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    return {pid for pid in children(supervisor) if "spawn_main" in proc_file(pid, "cmdline")}


def proxying(upstream: FakeUpstreamThread) -> list[str]:
    """Flags of a gateway in front of ``upstream``."""
    return ["--backend", "openai", "--upstreams", upstream.base_url]


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def fresh_connection_request(base_url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """A chat request on a connection of its own (so the kernel may give it to any worker)."""
    headers = {"connection": "close", **(headers or {})}
    return httpx.post(f"{base_url}/chat/completions", json=CHAT, headers=headers, timeout=10)


@pytest.fixture
def workers(upstream: FakeUpstreamThread) -> Iterator[Process]:
    flags = [*proxying(upstream), "--upstream-health-interval", "0.2"]
    with gateway_process(*flags, "--workers", str(WORKERS)) as process:
        wait_for(lambda: all_workers_ready(root(process)))
        yield process


def test_workers_serve_one_port_and_one_set_of_metrics(workers: Process) -> None:
    before = sum(by_worker(root(workers), "sinkwatch_requests_total").values())

    def ask(_: int) -> str:
        client = openai.OpenAI(base_url=workers.base_url, api_key="x", max_retries=0, timeout=10)
        with client:
            return (
                client.chat.completions.create(model=FAKE_MODEL, messages=CHAT["messages"]).choices[0].message.content
            )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(40)))
    assert all(answers)
    served = by_worker(root(workers), "sinkwatch_requests_total")
    assert set(served) == {"0", "1"}
    assert sum(served.values()) - before == 40
    assert by_worker(root(workers), "sinkwatch_worker_up") == {"0": 1.0, "1": 1.0}


def test_a_rate_limit_holds_across_workers(upstream: FakeUpstreamThread) -> None:
    burst = 6
    flags = [*proxying(upstream), "--workers", str(WORKERS)]
    limits = ["--rate-limit-rps", "0.001", "--rate-limit-burst", str(burst)]
    with gateway_process(*flags, *limits) as process:
        wait_for(lambda: all_workers_ready(root(process)))
        with ThreadPoolExecutor(4) as pool:
            statuses = [
                response.status_code for response in pool.map(fresh_connection_request, [process.base_url] * 24)
            ]
        assert statuses.count(200) == burst
        assert statuses.count(429) == 24 - burst
        refused = by_worker(root(process), "sinkwatch_rate_limited_total")
        answered = by_worker(root(process), "sinkwatch_requests_total")
        per_worker = {worker: refused.get(worker, 0) + answered.get(worker, 0) for worker in ("0", "1")}
        assert all(per_worker.values()), f"one worker took every request: {per_worker}"


def test_a_worker_that_dies_is_started_again(workers: Process) -> None:
    supervisor = workers.popen.pid
    first = worker_pids(supervisor)
    assert len(first) == WORKERS
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(worker_pids(supervisor)) == WORKERS and victim not in worker_pids(supervisor))
    wait_for(lambda: all_workers_ready(root(workers)))
    assert all(fresh_connection_request(workers.base_url).status_code == 200 for _ in range(10))
    assert sorted(by_worker(root(workers), "sinkwatch_worker_restarts_total").values()) == [0.0, 1.0]


def test_a_worker_that_cannot_start_again_is_retried_while_the_other_serves(
    upstream: FakeUpstreamThread, tmp_path: Path
) -> None:
    calibration = tmp_path / "calibration.json"
    calibration.write_text(SHIPPED_CALIBRATION.read_text())
    flags = [*proxying(upstream), "--workers", str(WORKERS), "--calibration", str(calibration)]
    with gateway_process(*flags) as process:
        wait_for(lambda: all_workers_ready(root(process)))
        calibration.unlink()  # a replacement worker now fails while it builds its app
        os.kill(min(worker_pids(process.popen.pid)), signal.SIGKILL)
        wait_for(lambda: sum(by_worker(root(process), "sinkwatch_worker_restarts_total").values()) >= 3, timeout=30)
        assert process.popen.poll() is None  # the supervisor keeps going
        assert all(fresh_connection_request(process.base_url).status_code == 200 for _ in range(5))
        calibration.write_text(SHIPPED_CALIBRATION.read_text())
        wait_for(lambda: all_workers_ready(root(process)), timeout=30)  # the next attempt (after 4 s) starts


def test_sigterm_lets_a_stream_finish_refuses_new_connections_and_stops_every_worker() -> None:
    tokens = 20
    config = FakeUpstreamConfig(tokens=tokens, token_interval=0.1)
    with FakeUpstreamThread(config) as slow, gateway_process(*proxying(slow), "--workers", str(WORKERS)) as process:
        wait_for(lambda: all_workers_ready(root(process)))
        pids = worker_pids(process.popen.pid)
        assert len(pids) == WORKERS
        client = openai.OpenAI(base_url=process.base_url, api_key="x", max_retries=0, timeout=30)
        stream = client.chat.completions.create(model=FAKE_MODEL, messages=CHAT["messages"], stream=True)
        chunks = [next(stream)]
        process.popen.send_signal(signal.SIGTERM)
        wait_for(lambda: _refused(process.base_url), timeout=10)
        chunks += list(stream)
        assert sum(bool(chunk.choices and chunk.choices[0].delta.content) for chunk in chunks) == tokens
        assert process.popen.wait(30) == 0
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def _refused(base_url: str) -> bool:
    try:
        fresh_connection_request(base_url)
    except httpx.ConnectError:
        return True
    return False


def test_the_supervisor_serves_the_metrics_port(upstream: FakeUpstreamThread) -> None:
    metrics_port = free_port()
    flags = [*proxying(upstream), "--workers", str(WORKERS)]
    with gateway_process(*flags, "--metrics-port", str(metrics_port)) as process:
        metrics_root = f"http://127.0.0.1:{metrics_port}"
        wait_for(lambda: all_workers_ready(metrics_root))
        assert fresh_connection_request(process.base_url).status_code == 200
        assert sum(by_worker(metrics_root, "sinkwatch_requests_total").values()) == 1
        assert httpx.get(f"{root(process)}/metrics").status_code == 404


def test_a_worker_that_cannot_start_stops_the_supervisor(upstream: FakeUpstreamThread, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port()), *proxying(upstream)]
    command += ["--workers", str(WORKERS), "--calibration", str(tmp_path / "missing.json")]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 1
    assert "could not start" in finished.stderr


def test_a_missing_api_keys_file_is_refused_before_any_worker_starts(
    upstream: FakeUpstreamThread, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port()), *proxying(upstream)]
    command += ["--workers", str(WORKERS), "--api-keys-file", str(tmp_path / "missing")]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 1
    assert "could not start" not in finished.stderr  # refused before any worker was started
    assert "No such file or directory" in finished.stderr


def test_workers_need_a_backend_without_a_model() -> None:
    command = [sys.executable, "-m", "gateway.cli", "serve", "--workers", "2"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 1
    assert "workers > 1 needs the openai backend without --reader" in finished.stderr


class _ExitsAfterBeingAsked:
    """A worker that is running the first ``running_answers`` times its exit code is read, and has exited
    (its sentinel readable) from then on: the last worker exiting between two looks of the supervisor."""

    def __init__(self, pid: int, running_answers: int) -> None:
        self.pid = pid
        self._answers = running_answers
        self.sentinel, write_end = os.pipe()
        os.close(write_end)  # an exited process's sentinel: at end of file

    @property
    def exitcode(self) -> int | None:
        self._answers -= 1
        return None if self._answers >= 0 else 0

    def join(self) -> None:
        os.close(self.sentinel)


def test_a_worker_that_exits_while_the_supervisor_looks_does_not_hold_up_the_stop() -> None:
    """Seen in CI: the last worker exited between the loop's look and the wait's, and the supervisor slept
    until the kill deadline (shutdown timeout + 10 s) before it exited."""
    settings = SimpleNamespace(drain_delay=0.0, shutdown_timeout=600.0)
    target = subprocess.Popen(["sleep", "60"])  # what the SIGTERM of the stop reaches
    listener = socket.socket()
    supervisor = Supervisor(settings, listener, contexts=[], run=lambda *_: None)  # type: ignore[arg-type]
    supervisor.workers = [_ExitsAfterBeingAsked(target.pid, running_answers=2)]  # the SIGTERM's look, the loop's
    stopping = threading.Thread(target=supervisor._stop_all, daemon=True)
    try:
        stopping.start()
        stopping.join(timeout=30)
        assert not stopping.is_alive(), "the supervisor waits on no worker though one was running"
    finally:
        target.kill()
        target.wait()
