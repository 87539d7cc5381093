"""Turns captured states into features and sends them, on a thread of its own beside the model runner.

The publisher owns one :class:`FeatureExtractor` per monitored engine request (the same extractor the
embedded engine uses, so both backends compute identical statistics) and the sockets to the gateways.
The runner hands it one :class:`CapturedStep` per engine step through a bounded queue and never waits:
when the queue is full the step is refused, and the runner stops monitoring the requests in it rather
than let their windows skip a token.
"""

import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from monitors.features import FeatureExtractor, StepFeatures
from monitors.vllm_plugin.sinks import SinkSockets
from monitors.vllm_plugin.wire import RequestTag, encode_batch

log = logging.getLogger(f"vllm.{__name__}")  # under vLLM's logger, so it shows in its log

MAX_PENDING_STEPS = 256  # engine steps waiting for the publisher before the runner gives up on them


@dataclass
class CapturedStep:
    """What one engine step sampled for the monitored requests: one row per request.

    ``states`` is ``[rows, layers, d]`` (the residual stream behind each sampled token at the captured
    layers, float32), ``entropies`` the next-token entropy of each row; ``ended`` lists engine request ids
    whose extractors can be dropped.
    """

    engine_ids: list[str]
    tags: list[RequestTag]
    token_ids: list[int]
    states: np.ndarray
    entropies: np.ndarray
    ended: list[str] = field(default_factory=list)


class FeaturePublisher:
    """A daemon thread: extractor pushes, batching per gateway, ZMQ sends."""

    def __init__(self, new_extractor: Callable[[], FeatureExtractor], profile: str, sockets: SinkSockets) -> None:
        self._new_extractor = new_extractor
        self._profile = profile
        self._sockets = sockets
        self._extractors: dict[str, FeatureExtractor] = {}
        self._queue: queue.Queue[CapturedStep | None] = queue.Queue(maxsize=MAX_PENDING_STEPS)
        self._thread = threading.Thread(target=self._run, name="sinkwatch-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, step: CapturedStep) -> bool:
        """Queue a step without waiting; False when the publisher is too far behind to take it."""
        try:
            self._queue.put_nowait(step)
        except queue.Full:
            return False
        return True

    def close(self) -> None:
        """Publish what is queued, stop the thread, close the sockets."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)
        self._sockets.close()

    def _run(self) -> None:
        while (step := self._queue.get()) is not None:
            try:
                self.process(step)
            except Exception:  # a bad step must not end monitoring for everyone
                log.exception("sinkwatch: failed to publish an engine step's features")

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
            rows = FeatureExtractor.push_many(extractors, step.states, step.entropies, step.token_ids)
            for tag, features in zip(step.tags, rows, strict=True):
                batches[tag.sink].append((tag.request_id, features))
        for engine_id in step.ended:
            self._extractors.pop(engine_id, None)
        for sink, items in batches.items():
            self._sockets.send(sink, encode_batch(self._profile, items))
