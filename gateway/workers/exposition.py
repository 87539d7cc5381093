"""Every worker's metrics in one scrape: each worker serves its own exposition, a scrape gathers them all.

With ``--workers N`` each worker process has its own default registry, and a scrape of ``/metrics`` lands
on any one of them (or on the supervisor's ``--metrics-port``). So each worker serves its registry's text
exposition on a private unix socket (:func:`serve_exposition`), and whoever answers a scrape reads every
worker's socket and returns them all (:class:`WorkerExpositions`), each sample labelled ``worker="i"``.

Why a ``worker`` label rather than summing the workers' values here: a worker that restarts starts its
counters again from zero, so a sum would go down and ``rate()`` would read the whole remaining sum as a
counter reset; per-worker series stay monotonic, and the dashboards and rules aggregate with
``sum by``/``max by`` anyway, so they read the same values as from a single process. Gauges and info
metrics need no rule about how to combine them either.

Why not prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``): it only aggregates values
that metric objects write to its files, so it cannot export ``set_function`` gauges (the event loop's task
count) nor :class:`~prometheus_client.Info` metrics, and it needs its directory wiped and dead processes
marked by hand.

``sinkwatch_worker_up`` tells, per worker, whether its exposition was read at this scrape, and
``sinkwatch_worker_restarts_total`` how often the supervisor started it again. A
:class:`WorkerExpositions` must not be registered in a worker's default registry: that registry is what
the workers serve, so each scrape would read itself.
"""

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

__all__ = ["GATHERED_SERIES", "WorkerExpositions", "serve_exposition"]

log = logging.getLogger(__name__)

WORKER_LABEL = "worker"
UP_METRIC = "sinkwatch_worker_up"
RESTARTS_METRIC = "sinkwatch_worker_restarts"  # a counter: exposed as sinkwatch_worker_restarts_total
GATHERED_SERIES = frozenset({UP_METRIC, f"{RESTARTS_METRIC}_total"})  # added to the workers' own series
_CHUNK = 1 << 16


async def serve_exposition(path: Path) -> asyncio.AbstractServer:
    """Serve this process's default registry on the unix socket ``path``: one exposition per connection."""
    path.unlink(missing_ok=True)  # left by a worker that died before
    return await asyncio.start_unix_server(_send_exposition, path=path)


async def _send_exposition(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Write the exposition (text format 0.0.4) and hang up; nothing is read from the peer."""
    try:
        with contextlib.suppress(ConnectionError):  # the scraper gave up before reading it all
            writer.write(generate_latest())
            await writer.drain()
    finally:
        writer.close()


class WorkerExpositions(Collector):
    """The metrics of every worker, read from their exposition sockets at each collection.

    ``paths[i]`` is worker ``i``'s socket. A worker whose exposition cannot be read within ``timeout``
    seconds (socket missing or refused, no answer, garbled text) is left out, with a warning and
    ``sinkwatch_worker_up{worker="i"} 0``; collecting never raises. The workers are read concurrently, so a
    stuck one costs one ``timeout``, not one per worker. ``restarts[i]``, when given, is how often the
    supervisor started worker ``i`` again (``sinkwatch_worker_restarts_total``).
    """

    def __init__(self, paths: Sequence[Path], timeout: float = 2.0, restarts: Sequence[int] = ()) -> None:
        self.paths = tuple(paths)
        self.timeout = timeout
        self.restarts = restarts

    def collect(self) -> Iterator[Metric]:
        """Every worker's families, merged by name with a ``worker`` label, then ``sinkwatch_worker_up``."""
        with ThreadPoolExecutor(max(len(self.paths), 1), thread_name_prefix="worker-exposition") as pool:
            expositions = list(pool.map(self._read_worker, self.paths))
        up = GaugeMetricFamily(UP_METRIC, "1 when a worker's metrics were read at this scrape", labels=[WORKER_LABEL])
        merged: dict[str, Metric] = {}
        for index, families in enumerate(expositions):
            up.add_metric([str(index)], float(families is not None))
            for family in families or ():
                _merge(merged, family, str(index))
        yield from merged.values()
        yield up
        if self.restarts:
            restarted = CounterMetricFamily(
                RESTARTS_METRIC, "Times the supervisor started a worker again", labels=[WORKER_LABEL]
            )
            for index, count in enumerate(self.restarts):
                restarted.add_metric([str(index)], float(count))
            yield restarted

    def render(self) -> bytes:
        """The text exposition (format 0.0.4) of every worker's metrics."""
        return generate_latest(self)

    def _read_worker(self, path: Path) -> list[Metric] | None:
        """The metric families served at ``path``, or None (logged) when they cannot be read."""
        try:
            return _parse(_read(path, self.timeout))
        # OSError from the socket (missing, refused, timed out); the lax parser raises ValueError, IndexError...
        except Exception as error:
            log.warning("no metrics from worker socket %s: %r", path, error)
            return None


def _read(path: Path, timeout: float) -> bytes:
    """Everything the unix socket ``path`` sends until it hangs up, within ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    chunks = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        while chunk := _receive(sock, deadline):
            chunks.append(chunk)
    return b"".join(chunks)


def _receive(sock: socket.socket, deadline: float) -> bytes:
    """The next bytes from ``sock`` (empty at its end), or TimeoutError once ``deadline`` has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the exposition did not end in time")
    sock.settimeout(left)
    return sock.recv(_CHUNK)


def _parse(exposition: bytes) -> list[Metric]:
    """The families of a text exposition; one that is empty or cut short mid-line is refused.

    A worker's registry is never empty, and it sends nothing when generating its exposition failed; a cut
    last line could still parse, with a wrong value (a counter's ``1234`` read as ``12``).
    """
    if not exposition.endswith(b"\n"):
        raise ValueError("empty or truncated exposition")
    return list(text_string_to_metric_families(exposition.decode()))


def _merge(merged: dict[str, Metric], family: Metric, worker: str) -> None:
    """Add ``family``'s samples, labelled with ``worker``, to the family of the same name in ``merged``."""
    if family.name not in merged:
        merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
    merged[family.name].samples.extend(
        sample._replace(labels={**sample.labels, WORKER_LABEL: worker}) for sample in family.samples
    )
