"""What every hostile-client test watches: ``/healthz`` answering quickly throughout, and resources that
return to their baseline once the attack is over."""

import threading
import time
from collections.abc import Callable
from types import TracebackType

import httpx

HEALTH_DEADLINE = 0.1  # seconds: /healthz answers within this throughout an attack


class HealthWatch:
    """Polls ``GET /healthz`` on a thread while the ``with`` block runs; records every latency and failure."""

    def __init__(self, root: str, interval: float = 0.05) -> None:
        self._url = f"{root}/healthz"
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def _poll(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get(self._url).status_code
                except httpx.HTTPError as error:
                    self.failures.append(f"{type(error).__name__}: {error}")
                else:
                    if status != 200:
                        self.failures.append(f"status {status}")
                self.latencies.append(time.perf_counter() - started)
                self._stop.wait(self._interval)

    def __enter__(self) -> "HealthWatch":
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

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
