"""``sinkwatch serve --workers N``: N processes serving one listening socket, watched by this one.

One Python process saturates one core (docs/BENCHMARKS.md); more workers serve more requests where the
machine has the cores. The supervisor binds the socket and starts the workers (the spawn start method:
each builds its own app, upstream pool and health checks). The kernel hands each new connection to
whichever worker accepts first. The workers take rate-limit tokens from buckets in shared memory, so a
key's limit holds across all of them, and each serves its own metrics on a private unix socket: a scrape
of ``/metrics`` (on any worker, or on the supervisor's ``--metrics-port``) gathers them all, labelled
by ``worker`` (gateway/workers/exposition.py).

A worker that dies after it started serving is started again. One that dies before (bad settings, a
port it cannot use) stops them all: starting it again would fail the same way. SIGINT or SIGTERM asks the
workers to finish their requests and stop; a second one kills them.
"""

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path

import uvicorn
from prometheus_client import start_http_server

from gateway.config import Settings
from gateway.security.admission import ANONYMOUS
from gateway.security.keys import ApiKeys
from gateway.security.ratelimit import SharedBuckets
from gateway.workers.context import WorkerContext
from gateway.workers.exposition import WorkerExpositions

log = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")
_PR_SET_PDEATHSIG = 1  # prctl(2)


def serve_workers(settings: Settings) -> int:
    """Serve with ``settings.workers`` processes until told to stop; the exit status."""
    address = uvicorn.Config(app=None, host=settings.host, port=settings.port, log_level=settings.log_level)
    listener = address.bind_socket()
    run_dir = Path(tempfile.mkdtemp(prefix="sinkwatch-workers-"))
    try:
        return Supervisor(settings, listener, run_dir, _shared_buckets(settings)).run()
    finally:
        listener.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _shared_buckets(settings: Settings) -> SharedBuckets | None:
    """One bucket per API key name (and the anonymous one), when rate limits are on."""
    if settings.rate_limit_rps <= 0:
        return None
    names = ApiKeys.load(settings.api_keys, settings.api_keys_file).names or [ANONYMOUS]
    return SharedBuckets(names)


class Supervisor:
    """Starts the workers, starts again those that die, and stops them all on a signal."""

    def __init__(self, settings: Settings, listener: socket.socket, run_dir: Path, buckets: SharedBuckets | None):
        self.settings = settings
        self.listener = listener
        self.contexts = [WorkerContext(i, settings.workers, run_dir, buckets) for i in range(settings.workers)]
        self.workers: list[BaseProcess] = []
        self.signals = 0
        self._wakeup_reader, self._wakeup_writer = socket.socketpair()

    def run(self) -> int:
        """Until a signal, or a worker that could not start; the exit status."""
        self._catch_signals()
        self.workers = [self._start(context) for context in self.contexts]
        metrics_server = self._serve_metrics()
        status = 0
        try:
            while not self.signals and status == 0:
                wait([self._wakeup_reader, *(worker.sentinel for worker in self.workers)])
                for index, (worker, context) in enumerate(zip(self.workers, self.contexts, strict=True)):
                    if worker.exitcode is None or self.signals:
                        continue
                    if not context.exposition_path(index).exists():  # it never got as far as serving
                        log.error("worker %d could not start (exit status %s); stopping", index, worker.exitcode)
                        status = 1
                        break
                    log.warning("worker %d died (exit status %s); starting it again", index, worker.exitcode)
                    self.workers[index] = self._start(context)
        finally:
            self._stop_all()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
        return status

    def _start(self, context: WorkerContext) -> BaseProcess:
        context.exposition_path(context.index).unlink(missing_ok=True)
        worker = _SPAWN.Process(
            target=_worker_main, args=(self.settings, self.listener, context), name=f"sinkwatch-worker-{context.index}"
        )
        worker.start()
        return worker

    def _serve_metrics(self):
        """The gathered metrics on ``--metrics-port``, when set (the workers do not serve it)."""
        if not self.settings.metrics_port:
            return None
        expositions = WorkerExpositions(self.contexts[0].exposition_paths())
        server, _ = start_http_server(self.settings.metrics_port, addr=self.settings.host, registry=expositions)
        return server

    def _catch_signals(self) -> None:
        self._wakeup_writer.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_writer.fileno())
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._on_signal)

    def _on_signal(self, number: int, frame: object) -> None:
        self.signals += 1
        if self.signals > 1:
            log.warning("second %s: killing the workers", signal.Signals(number).name)
            self._send(signal.SIGKILL)

    def _stop_all(self) -> None:
        """Ask every worker to finish and stop (SIGTERM), and wait for them; a second signal kills them."""
        self._send(signal.SIGTERM)
        while alive := [worker for worker in self.workers if worker.exitcode is None]:
            wait([self._wakeup_reader, *(worker.sentinel for worker in alive)])
            self._drain_wakeups()
        for worker in self.workers:
            worker.join()

    def _send(self, number: signal.Signals) -> None:
        for worker in self.workers:
            if worker.exitcode is None and worker.pid is not None:
                os.kill(worker.pid, number)

    def _drain_wakeups(self) -> None:
        self._wakeup_reader.setblocking(False)
        try:
            while self._wakeup_reader.recv(64):
                pass
        except BlockingIOError:
            pass


def _worker_main(settings: Settings, listener: socket.socket, context: WorkerContext) -> None:
    """A worker process: the app, served on the supervisor's socket."""
    _die_with_parent()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s worker {context.index} %(levelname)s %(name)s: %(message)s",
    )
    from gateway.app import create_app
    from gateway.server import run_server

    run_server(create_app(settings, worker=context), settings, sockets=[listener])


def _die_with_parent() -> None:
    """Have the kernel stop this worker if the supervisor is killed (Linux), so none is left serving."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
