"""The worker's side of monitoring: a thread that forwards captured steps to the feature reducer process.

The runner hands it one :class:`CapturedStep` per engine step through a bounded queue and never waits:
when the queue is full the step is refused, and the runner stops monitoring the requests in it rather
than let their windows skip a token. The thread works on a step only once the runner has started the next
one (or has had ``HANDOFF_GRACE_S`` to do so): between two steps the engine core schedules and the API
server streams out the tokens, and monitoring work done then, on the cores they run on, delays every
request; during the model's forward pass those cores are idle or busy-waiting. The thread computes the
next-token entropies when the runner left it the logits (CPU hosts; torch releases the GIL meanwhile)
and sends the step to the reducer (``reducer.py``, a process the publisher starts) over a local ZMQ pipe,
waiting while the reducer is behind. Thread and reducer run off the model's CPU cores (``placement``).
"""

import json
import logging
import os
import pickle
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace

import zmq

from monitors.bands import LayerBand, format_bands
from monitors.calibration import Calibration
from monitors.vllm_plugin.placement import bind, resolve_cpus
from monitors.vllm_plugin.reducer import STOP
from monitors.vllm_plugin.step import CapturedStep

__all__ = ["MAX_PENDING_STEPS", "REDUCER_MALLOC_ENV", "FeaturePublisher"]

log = logging.getLogger(f"vllm.{__name__}")  # under vLLM's logger, so it shows in its log

MAX_PENDING_STEPS = 256  # engine steps waiting for the publisher before the runner gives up on them
PIPE_HWM = 64  # steps queued in the pipe to the reducer before the publisher waits for it
SEND_WAIT_MS = 1000  # how long a send waits before checking that the reducer is still running
REDUCER_EXIT_WAIT_S = 10
# How long a step's work waits for the runner to start its next step. From the end of sampling to the start of
# the next step (the engine core taking the sampled tokens and scheduling) the runner took 2–3 ms at the
# median, 7–8 ms at p99 and more than 20 ms once in 3000 steps at 1 and 16 streams on a 2-core CPU host
# (docs/BENCHMARKS.md). A step that waits longer was the engine's last before it went idle: its features,
# which the gateway waits for, are late by this much, so the grace is as short as the gaps allow.
HANDOFF_GRACE_S = 0.02
# How vLLM's CPU worker binds the OpenMP runtime it preloads (LD_PRELOAD) to the model's cores. A reducer
# started with these is bound to the model's core by that runtime as it loads, racing any binding from here
# (it won, until this was found: the reducer competed with the model's own thread); it starts without them
# and binds itself once loaded.
OPENMP_BINDING_VARIABLES = frozenset({"GOMP_CPU_AFFINITY", "KMP_AFFINITY", "OMP_PROC_BIND", "OMP_PLACES"})
# glibc malloc settings for the reducer. By default glibc hands freed memory at the top of the heap back to
# the OS past a trim threshold that adapts to the program, and the extractors' per-step temporaries (one
# to a few MB each) were then faulted in afresh at every step: 132 000 page faults and 11.5 ms of CPU per
# 16-row step, against 19 000 and 7.5 ms with these settings (same peak memory; docs/BENCHMARKS.md).
# Allocations below 32 MiB come from the heap, which keeps up to 128 MiB free before trimming.
REDUCER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}


class FeaturePublisher:
    """A daemon thread and the reducer process behind it."""

    def __init__(
        self, calibration: Calibration, bands: tuple[LayerBand, ...], cpus: str = "auto", calibration_path: str = ""
    ) -> None:
        self._calibration = calibration
        self._calibration_path = calibration_path  # watched by the reducer for a new calibration when set
        self._bands = bands
        self._cpus_setting = cpus
        self._cpus: frozenset[int] | None = None
        self._queue: queue.Queue[tuple[CapturedStep, int] | None] = queue.Queue(maxsize=MAX_PENDING_STEPS)
        self._runner_steps = 0  # engine steps the runner has started
        self._runner_idle_at = -1  # the count at which the runner last failed to start a step within the grace
        self._runner_moved_on = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="sinkwatch-publisher", daemon=True)
        self._context = zmq.Context()
        self._pipe = self._context.socket(zmq.PUSH)
        self._pipe.setsockopt(zmq.SNDHWM, PIPE_HWM)
        self._pipe.setsockopt(zmq.SNDTIMEO, SEND_WAIT_MS)
        self._pipe.setsockopt(zmq.LINGER, 0)
        # a socket file in a directory only this user can enter: no other local process can connect and
        # take steps off the pipe (an abstract socket would have no permissions)
        self._folder = tempfile.mkdtemp(prefix="sinkwatch-reducer-")
        self._endpoint = f"ipc://{self._folder}/pipe"
        self._pipe.bind(self._endpoint)
        self._reducer: subprocess.Popen | None = None
        self._reducer_lost = False

    def start(self) -> None:
        """Start the reducer process, then the thread; both leave the model's cores."""
        self._cpus = resolve_cpus(self._cpus_setting)
        config = {
            "calibration": self._calibration.to_json(),
            "bands": format_bands(self._bands),
            "endpoint": self._endpoint,
            "worker_pid": os.getpid(),
            "cpus": None if self._cpus is None else sorted(self._cpus),
            "calibration_path": self._calibration_path,
        }
        environment = {name: value for name, value in os.environ.items() if name not in OPENMP_BINDING_VARIABLES}
        self._reducer = subprocess.Popen(
            [sys.executable, "-m", "monitors.vllm_plugin.reducer"],
            stdin=subprocess.PIPE,
            env={**environment, **REDUCER_MALLOC_ENV},
        )
        try:
            with self._reducer.stdin:
                self._reducer.stdin.write(json.dumps(config).encode())
        except BrokenPipeError:
            log.error("sinkwatch: the feature reducer did not start (code %s)", self._reducer.wait())
        self._thread.start()

    def runner_started_step(self) -> None:
        """The runner began an engine step: work on the steps before it no longer delays the engine."""
        with self._runner_moved_on:
            self._runner_steps += 1
            self._runner_moved_on.notify()

    def submit(self, step: CapturedStep) -> bool:
        """Queue a step without waiting; False when the publisher is too far behind to take it."""
        try:
            self._queue.put_nowait((step, self._runner_steps))
        except queue.Full:
            return False
        return True

    def close(self) -> None:
        """Forward what is queued, stop the thread and the reducer."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=REDUCER_EXIT_WAIT_S)
        if self._reducer is not None:
            try:
                self._pipe.send(STOP)
                self._reducer.wait(REDUCER_EXIT_WAIT_S)
            except (zmq.Again, subprocess.TimeoutExpired):
                self._reducer.kill()
                self._reducer.wait()
        self._pipe.close()
        self._context.term()
        shutil.rmtree(self._folder, ignore_errors=True)

    def _run(self) -> None:
        bind(0, self._cpus, "publisher thread")
        while (item := self._queue.get()) is not None:
            step, runner_steps = item
            self._await_next_step(runner_steps)
            try:
                self._forward(step)
            except Exception:  # a bad step must not end monitoring for everyone
                log.exception("sinkwatch: failed to forward an engine step's states")

    def _await_next_step(self, runner_steps: int) -> None:
        """Wait until the runner has started more than ``runner_steps`` steps, or the grace is over; once
        the grace ran out at a count, the steps queued at that count go at once (the engine is idle)."""
        with self._runner_moved_on:
            if runner_steps == self._runner_idle_at:
                return
            if not self._runner_moved_on.wait_for(lambda: self._runner_steps > runner_steps, HANDOFF_GRACE_S):
                self._runner_idle_at = runner_steps

    def _forward(self, step: CapturedStep) -> None:
        """Send a step to the reducer with its entropies, waiting while the reducer catches up."""
        message = pickle.dumps(replace(step, entropies=step.row_entropies(), logits=None), protocol=5)
        while not self._reducer_lost:
            try:
                self._pipe.send(message)
                return
            except zmq.Again:
                if self._reducer is not None and self._reducer.poll() is not None:
                    self._reducer_lost = True
                    log.error(
                        "sinkwatch: the feature reducer exited (code %s); monitored requests get no features",
                        self._reducer.returncode,
                    )
