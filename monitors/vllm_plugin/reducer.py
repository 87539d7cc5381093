"""The feature reducer: a process of its own, started by the worker, that turns states into features.

The worker's publisher thread hands it each engine step's monitored rows (states, entropies, token ids)
over a local ZMQ pipe; the reducer keeps one :class:`FeatureExtractor` per engine request (the same
extractor the embedded engine uses, so both backends compute identical statistics) and pushes each
gateway its requests' features. It is a process rather than a thread of the worker because the
extractors' many small numpy calls hold the GIL: run as a thread, they held up the model runner's own
Python between kernels (measured: 8.5 % fewer tokens/s at 16 monitored streams on CPU). States stay on
the host, through a local pipe; only features go to the gateways.

Run as ``python -m monitors.vllm_plugin.reducer``: it reads its configuration (a JSON object: the
calibration, the bands, the pipe's address, the worker's pid, the CPU cores to run on and, when
``SINKWATCH_CALIBRATION`` names one, the calibration file to watch for a new calibration,
:mod:`monitors.vllm_plugin.calibration_watch`) from stdin, binds
itself to those cores, and exits when the pipe says stop or the worker that started it is gone.
"""

import json
import logging
import os
import pickle
import shutil
import signal
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import zmq

from monitors.bands import LayerBand, parse_bands
from monitors.calibration import Calibration
from monitors.features import FeatureExtractor, StepFeatures
from monitors.vllm_plugin.calibration_watch import CalibrationWatch
from monitors.vllm_plugin.placement import bind
from monitors.vllm_plugin.settings import PluginSettings
from monitors.vllm_plugin.sinks import SinkSockets
from monitors.vllm_plugin.step import CapturedStep
from monitors.vllm_plugin.wire import encode_batch, monitor_profile

__all__ = ["STOP", "FeatureReducer", "new_extractor_factory"]

log = logging.getLogger("sinkwatch.reducer")

STOP = b""  # the message that ends the reducer
LIVENESS_POLL_MS = 1000  # how often an idle reducer checks that its worker is still there


def new_extractor_factory(calibration: Calibration, bands: tuple[LayerBand, ...]) -> Callable[[], FeatureExtractor]:
    """Extractors exactly as the embedded engine builds them for this calibration."""
    options = calibration.extractor_options()
    return lambda: FeatureExtractor(bands, calibration.window, **options)


class FeatureReducer:
    """Extractor pushes for each step, batching per gateway, ZMQ sends. With a ``watch``, a new calibration
    file gives the requests that start afterwards its extractors and profile (:meth:`reload_if_changed`)."""

    def __init__(
        self,
        new_extractor: Callable[[], FeatureExtractor],
        profile: str,
        sockets: SinkSockets,
        watch: CalibrationWatch | None = None,
    ) -> None:
        self._new_extractor = new_extractor
        self._profile = profile
        self._sockets = sockets
        self._watch = watch
        self._extractors: dict[str, tuple[FeatureExtractor, str]] = {}  # engine id -> extractor, its profile

    def reload_if_changed(self) -> None:
        """Take a new calibration, if the watched file has one, for the requests that start from now on."""
        calibration = self._watch.changed() if self._watch is not None else None
        if calibration is not None:
            self._new_extractor = new_extractor_factory(calibration, self._watch.bands)
            self._profile = monitor_profile(calibration, self._watch.bands)

    def process(self, step: CapturedStep) -> None:
        """Push the step's rows into their requests' extractors together; send each gateway its requests' features."""
        batches: dict[tuple[str, str], list[tuple[str, StepFeatures]]] = defaultdict(list)
        extractors, profiles = [], []
        for engine_id in step.engine_ids:
            known = self._extractors.get(engine_id)
            if known is None:
                known = self._extractors[engine_id] = (self._new_extractor(), self._profile)
            extractors.append(known[0])
            profiles.append(known[1])
        entropies = step.row_entropies()
        for profile in dict.fromkeys(profiles):  # extractors of one calibration are pushed together
            rows = [i for i, p in enumerate(profiles) if p == profile]
            pushed = FeatureExtractor.push_many(
                [extractors[i] for i in rows],
                step.states if len(rows) == len(profiles) else step.states[rows],  # no copy in the usual case
                [entropies[i] for i in rows],
                [step.token_ids[i] for i in rows],
            )
            for i, features in zip(rows, pushed, strict=True):
                batches[step.tags[i].sink, profile].append((step.tags[i].request_id, features))
        for engine_id in step.ended:
            self._extractors.pop(engine_id, None)
        for (sink, profile), items in batches.items():
            self._sockets.send(sink, encode_batch(profile, items))

    def close(self) -> None:
        self._sockets.close()


def serve(endpoint: str, reducer: FeatureReducer, worker_pid: int) -> None:
    """Reduce the steps arriving at ``endpoint`` until told to stop or the worker that started it is gone
    (no longer its parent: also when the worker died before this process was up)."""
    context = zmq.Context()
    pipe = context.socket(zmq.PULL)
    pipe.connect(endpoint)
    try:
        while True:
            reducer.reload_if_changed()
            if not pipe.poll(LIVENESS_POLL_MS):
                if os.getppid() != worker_pid:
                    log.warning("sinkwatch: the vLLM worker is gone; the feature reducer stops")
                    return
                continue
            message = pipe.recv()
            if message == STOP:
                return
            try:
                reducer.process(pickle.loads(message))
            except Exception:  # a bad step must not end monitoring for everyone
                log.exception("sinkwatch: failed to reduce an engine step's features")
    finally:
        pipe.close(linger=0)
        context.term()


def _remove_pipe(endpoint: str) -> None:
    """Remove the folder of an ``ipc://FOLDER/pipe`` socket (the publisher's private temporary folder),
    which a worker that was killed or interrupted leaves behind."""
    if endpoint.startswith("ipc://"):
        shutil.rmtree(Path(endpoint.removeprefix("ipc://")).parent, ignore_errors=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop with the worker's process group, cleaning up
    config = json.loads(sys.stdin.read())
    bind(0, frozenset(config["cpus"]) if config.get("cpus") else None, "feature reducer process")
    calibration = Calibration.from_json(config["calibration"])
    bands = parse_bands(config["bands"])
    sockets = SinkSockets(PluginSettings.from_env().allowed_sinks)
    path = config.get("calibration_path")
    watch = CalibrationWatch(Path(path), calibration, bands) if path else None
    reducer = FeatureReducer(
        new_extractor_factory(calibration, bands), monitor_profile(calibration, bands), sockets, watch
    )
    try:
        serve(config["endpoint"], reducer, config["worker_pid"])
    except KeyboardInterrupt:  # Ctrl-C on the server reaches its whole process group
        pass
    finally:
        reducer.close()
        _remove_pipe(config["endpoint"])


if __name__ == "__main__":
    main()
