"""``sinkwatch serve --workers N``: N processes serving one listening socket, watched by this one.

One Python process saturates one core (docs/BENCHMARKS.md); more workers serve more requests where the
machine has the cores. The supervisor binds the socket, reads the API keys and starts the workers (the
spawn start method: each builds its own app, upstream pool and health checks). The kernel hands each new
connection to whichever worker accepts first. The workers take rate-limit tokens from buckets in shared
memory, so a key's limit holds across all of them, and each serves its own metrics on a private unix
socket: a scrape of ``/metrics`` (on any worker, or on the supervisor's ``--metrics-port``) gathers them
all, labelled by ``worker`` (gateway/workers/exposition.py).

A worker that dies is started again, at once if it had been serving, else after a pause that doubles
with each failed start (up to :data:`MAX_RESTART_DELAY`); ``sinkwatch_worker_restarts_total`` counts
them. A worker that cannot start the first time (bad settings, an unreadable calibration) stops them all:
starting it again would fail the same way. SIGINT or SIGTERM is passed on to every worker as SIGTERM:
each drains (gateway/server.py: ``/readyz`` 503 while it still serves for ``--drain-delay`` seconds, then
in-flight requests get ``--shutdown-timeout`` seconds). The supervisor closes its copy of the listening
socket when the delay is over, as the workers close theirs, so that new connections are then refused,
not left queued; a second signal, or workers still running well past the timeout, kills them.
"""

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from gateway.config import Settings
from gateway.metrics_port import serve_metrics_apart
from gateway.security.keys import ApiKeys
from gateway.security.ratelimit import SharedBuckets
from gateway.workers.exposition import WorkerExpositions
from gateway.workers.worker_context import WorkerContext

__all__ = ["serve_workers"]

log = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")
_PR_SET_PDEATHSIG = 1  # prctl(2)
FIRST_RESTART_DELAY = 1.0  # seconds before starting again a worker that died before it served
MAX_RESTART_DELAY = 30.0
KILL_AFTER = 10.0  # seconds past a worker's own last cancellation (LAST_GRACE) before it is killed

# What a worker process runs once it is set up: the app on the listening socket (gateway.launch.run_worker).
WorkerRun = Callable[[Settings, socket.socket, WorkerContext], None]


def serve_workers(settings: Settings, run: WorkerRun) -> int:
    """Serve with ``settings.workers`` processes, each running ``run`` (a module-level function: it crosses to
    the spawned process by name), until told to stop; the exit status."""
    ApiKeys.load(settings.api_keys.get_secret_value(), settings.api_keys_file)  # refuse a bad file up front
    address = uvicorn.Config(
        app=None, host=settings.host, port=settings.port, log_level=settings.log_level, log_config=None
    )
    listener = address.bind_socket()
    run_dir = Path(tempfile.mkdtemp(prefix="sinkwatch-workers-"))
    try:
        buckets = SharedBuckets(run_dir / "ratelimit.lock")
        restarts = _SPAWN.RawArray("q", settings.workers)
        contexts = [
            WorkerContext(i, settings.workers, os.getpid(), run_dir, restarts, buckets) for i in range(settings.workers)
        ]
        return Supervisor(settings, listener, contexts, run).run()
    finally:
        listener.close()
        shutil.rmtree(run_dir, ignore_errors=True)


class Supervisor:
    """Starts the workers, starts again those that die, and stops them all on a signal."""

    def __init__(
        self, settings: Settings, listener: socket.socket, contexts: list[WorkerContext], run: WorkerRun
    ) -> None:
        self.settings = settings
        self._run_worker = run
        self.listener = listener
        self.contexts = contexts
        self.workers: list[BaseProcess | None] = [None] * len(contexts)
        self.failed_starts = [0] * len(contexts)
        self.due: dict[int, float] = {}  # worker index -> when to start it again (monotonic)
        self.signals = 0
        self._wakeup_reader, self._wakeup_writer = socket.socketpair()

    def run(self) -> int:
        """Until a signal, or a worker that could not start; the exit status."""
        stop_metrics = self._serve_metrics()
        previous = self._catch_signals()
        status = 0
        try:
            for context in self.contexts:
                self._start(context)
            while not self.signals and status == 0:
                self._wait(self._unattended(), self._next_due())
                status = self._look_after_workers()
        finally:
            self._stop_all()
            stop_metrics()
            self._release_signals(previous)
        return status

    def _look_after_workers(self) -> int:
        """Schedule a restart for every worker that died, and restart those whose time has come; 1 when a
        worker could not start the first time."""
        now = time.monotonic()
        for worker, context in zip(self.workers, self.contexts, strict=True):
            index = context.index
            if worker is None or worker.exitcode is None or index in self.due:
                continue
            served = context.exposition_path(index).exists()  # it got as far as serving
            if not served and context.restarts[index] == 0:
                log.error("worker %d could not start (exit status %s); stopping", index, worker.exitcode)
                return 1
            failed = self.failed_starts[index] = 0 if served else self.failed_starts[index] + 1
            delay = min(MAX_RESTART_DELAY, FIRST_RESTART_DELAY * 2 ** (failed - 1)) if failed else 0.0
            log.warning("worker %d died (exit status %s); starting it again in %g s", index, worker.exitcode, delay)
            self.due[index] = now + delay
        for index, when in list(self.due.items()):
            if when <= now and not self.signals:
                del self.due[index]
                self.contexts[index].restarts[index] += 1
                self._start(self.contexts[index])
        return 0

    def _next_due(self) -> float | None:
        """Seconds until the next restart is due; None when none is."""
        return max(0.0, min(self.due.values()) - time.monotonic()) if self.due else None

    def _start(self, context: WorkerContext) -> None:
        context.exposition_path(context.index).unlink(missing_ok=True)
        worker = _SPAWN.Process(
            target=_worker_main,
            args=(self._run_worker, self.settings, self.listener, context),
            name=f"sinkwatch-worker-{context.index}",
        )
        worker.start()
        self.workers[context.index] = worker

    def _alive(self) -> list[BaseProcess]:
        return [worker for worker in self.workers if worker is not None and worker.exitcode is None]

    def _unattended(self) -> list[BaseProcess]:
        """Workers running, or dead and not yet seen to (not :meth:`_alive`: asking a process whether it is
        alive reaps it, and one that died just then would go unnoticed)."""
        return [worker for index, worker in enumerate(self.workers) if worker is not None and index not in self.due]

    def _wait(self, workers: list[BaseProcess], timeout: float | None) -> None:
        """Until one of ``workers`` exits (or has), a signal arrives or ``timeout`` seconds pass."""
        wait([self._wakeup_reader, *(worker.sentinel for worker in workers)], timeout)
        self._wakeup_reader.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while self._wakeup_reader.recv(64):
                pass

    def _serve_metrics(self) -> Callable[[], None]:
        """The gathered metrics on ``--metrics-port``, when set (the workers do not serve it)."""
        context = self.contexts[0]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkerExpositions(context.exposition_paths(), restarts=context.restarts))
        return serve_metrics_apart(self.settings, registry)

    def _catch_signals(self) -> dict[int, object]:
        """Count SIGINT and SIGTERM (and wake :meth:`_wait`), pass SIGHUP on to the workers; the handlers
        they had."""
        self._wakeup_writer.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_writer.fileno())
        previous = {number: signal.signal(number, self._on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        return previous

    def _release_signals(self, previous: dict[int, object]) -> None:
        signal.set_wakeup_fd(-1)
        for number, handler in previous.items():
            signal.signal(number, handler)
        self._wakeup_reader.close()
        self._wakeup_writer.close()

    def _on_signal(self, number: int, frame: object) -> None:
        self.signals += 1

    def _on_hangup(self, number: int, frame: object) -> None:
        log.info("SIGHUP: the workers reload their API keys and rate limits")
        self._send(signal.SIGHUP)

    def _stop_all(self) -> None:
        """Ask every worker to drain and stop (SIGTERM), refuse new connections once the drain delay is over,
        and wait for them; a second signal, or workers left :data:`KILL_AFTER` seconds past the shutdown
        timeout, kills them."""
        self._send(signal.SIGTERM)
        close_at = time.monotonic() + self.settings.drain_delay
        kill_at = close_at + self.settings.shutdown_timeout + KILL_AFTER
        killed = False
        while alive := self._alive():  # asked once: one that exits after the asking still wakes the wait
            now = time.monotonic()
            if now >= close_at:
                self.listener.close()
            if not killed and (self.signals > 1 or now >= kill_at):
                log.warning("%s: killing the workers", "second signal" if self.signals > 1 else "shutdown timeout")
                self._send(signal.SIGKILL)
                killed = True
            self._wait(alive, close_at - now if now < close_at else None if killed else kill_at - now)
        self.listener.close()
        for worker in self.workers:
            if worker is not None:
                worker.join()

    def _send(self, number: signal.Signals) -> None:
        for worker in self._alive():
            with contextlib.suppress(ProcessLookupError):  # exited since
                os.kill(worker.pid, number)


def _worker_main(run: WorkerRun, settings: Settings, listener: socket.socket, context: WorkerContext) -> None:
    """A worker process: tied to its supervisor, then ``run``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C while starting: the supervisor's SIGTERM follows
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app's reloader takes it
    _die_with_parent(context.supervisor_pid)
    run(settings, listener, context)


def _die_with_parent(supervisor_pid: int) -> None:
    """Have the kernel stop this worker if the supervisor is killed (Linux), so none is left serving; exit
    now if it already was."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor_pid:
        sys.exit("sinkwatch worker: the supervisor is gone")
