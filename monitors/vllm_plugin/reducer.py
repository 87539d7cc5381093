"""The feature reducer: a process of its own, started by the worker, that turns states into features.

The worker's publisher thread hands it each engine step's monitored rows (states, entropies, token ids)
over a local ZMQ pipe; the reducer keeps one :class:`FeatureExtractor` per engine request (the same
extractor the embedded engine uses, so both backends compute identical statistics) and pushes each
gateway its requests' features. It is a process rather than a thread of the worker because the
extractors' many small numpy calls hold the GIL: run as a thread, they held up the model runner's own
Python between kernels (measured: 8.5 % fewer tokens/s at 16 monitored streams on CPU). States stay on
the host, through a local pipe; only features go to the gateways.

Run as ``python -m monitors.vllm_plugin.reducer``: it reads its configuration (a JSON object: the
calibration, the bands, the pipe's address, the worker's pid and the CPU cores to run on) from stdin, binds
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
    """Extractor pushes for each step, batching per gateway, ZMQ sends."""

    def __init__(self, new_extractor: Callable[[], FeatureExtractor], profile: str, sockets: SinkSockets) -> None:
        self._new_extractor = new_extractor
        self._profile = profile
        self._sockets = sockets
        self._extractors: dict[str, FeatureExtractor] = {}

    def process(self, step: CapturedStep) -> None:
        """Push the step's rows into their requests' extractors together; send each gateway its requests' features."""
        batches: dict[str, list[tuple[str, StepFeatures]]] = defaultdict(list)
        extractors = []
        for engine_id in step.engine_ids:
            extractor = self._extractors.get(engine_id)
            if extractor is None:
                extractor = self._extractors[engine_id] = self._new_extractor()
            extractors.append(extractor)
        if extractors:
            rows = FeatureExtractor.push_many(extractors, step.states, step.row_entropies(), step.token_ids)
            for tag, features in zip(step.tags, rows, strict=True):
                batches[tag.sink].append((tag.request_id, features))
        for engine_id in step.ended:
            self._extractors.pop(engine_id, None)
        for sink, items in batches.items():
            self._sockets.send(sink, encode_batch(self._profile, items))

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
    reducer = FeatureReducer(new_extractor_factory(calibration, bands), monitor_profile(calibration, bands), sockets)
    try:
        serve(config["endpoint"], reducer, config["worker_pid"])
    except KeyboardInterrupt:  # Ctrl-C on the server reaches its whole process group
        pass
    finally:
        reducer.close()
        _remove_pipe(config["endpoint"])


if __name__ == "__main__":
    main()
