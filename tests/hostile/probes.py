"""What every hostile-client test watches: ``/healthz`` answering quickly throughout, and resources that
return to their baseline once the attack is over."""

import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from types import TracebackType

import httpx

HEALTH_DEADLINE = 0.1  # seconds: /healthz answers within this throughout an attack


class HealthWatch:
    """Polls ``GET /healthz`` from a process of its own while the ``with`` block runs, and records every latency
    and failure. Its own process: a poller thread beside the attack would time the test's own GIL and
    scheduling (an attack loop in Python holds the interpreter) rather than the gateway."""

    def __init__(self, root: str, interval: float = 0.05) -> None:
        self._url = f"{root}/healthz"
        self._interval = interval
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results, sender = context.Pipe(duplex=False)
        self._process = context.Process(target=_poll, args=(self._url, interval, self._stop, sender), daemon=True)
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def __enter__(self) -> "HealthWatch":
        self._process.start()
        started = self._results.recv()  # the poller is up and has answered once: the watch covers the block
        assert started == "polling", started
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._results.poll(30):
            self.latencies, self.failures = self._results.recv()
        self._process.join(timeout=10)

    @property
    def worst(self) -> float:
        """The slowest answer seen (seconds)."""
        return max(self.latencies, default=0.0)

    def assert_healthy(self, deadline: float = HEALTH_DEADLINE) -> None:
        """Every poll answered 200 within ``deadline``, and there were polls."""
        assert self.latencies, "/healthz was never polled"
        assert not self.failures, f"/healthz failed: {self.failures[:3]}"
        assert self.worst <= deadline, f"/healthz took {self.worst * 1000:.0f} ms (limit {deadline * 1000:.0f} ms)"


def settles_to(read: Callable[[], float], baseline: float, slack: float, timeout: float = 30) -> float:
    """Wait until ``read()`` is within ``slack`` of ``baseline`` (memory given back, sockets closed); the last
    value read. Fails after ``timeout`` seconds with the value it stuck at."""
    deadline = time.monotonic() + timeout
    value = read()
    while value > baseline + slack:
        assert time.monotonic() < deadline, f"stuck at {value:g}, baseline {baseline:g} (+{slack:g} allowed)"
        time.sleep(0.5)
        value = read()
    return value


def _poll(url: str, interval: float, stop: Event, results: Connection) -> None:
    """The poller process: ``GET url`` every ``interval`` seconds until ``stop``; sends (latencies, failures)."""
    latencies: list[float] = []
    failures: list[str] = []
    with httpx.Client(timeout=5) as client:
        client.get(url)
        results.send("polling")
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status = client.get(url).status_code
            except httpx.HTTPError as error:
                failures.append(f"{type(error).__name__}: {error}")
            else:
                if status != 200:
                    failures.append(f"status {status}")
            latencies.append(time.perf_counter() - started)
            stop.wait(interval)
    results.send((latencies, failures))
