"""The gateway's end of the vLLM plugin's statistics: a ZMQ PULL socket and one feature stream per request.

Workers connect to the address the gateway sends with each request and push one message per engine step
(see ``monitors.vllm_plugin.wire``). The receiver routes each request's :class:`StepFeatures` to the
stream the backend opened for it; the backend takes them out in token order. Features normally arrive
before their token (the worker sends them in the step that samples it, before vLLM's API server has even
seen the token); a token whose features are not there within ``timeout`` seconds goes on without them
(``missing``), and the request's next tokens do not wait again until features flow for it once more.
Features that arrive after their token left are counted ``late`` and dropped.
"""

import asyncio
import contextlib
import logging
from urllib.parse import urlsplit

import zmq
import zmq.asyncio

from gateway import metrics
from monitors.features import StepFeatures
from monitors.vllm_plugin.wire import decode_batch, profile_accepts

__all__ = ["FeatureStream", "StatsReceiver"]

log = logging.getLogger(__name__)

_WILDCARD_HOSTS = {"*", "0.0.0.0", "::"}


class FeatureStream:
    """The features of one request's tokens, taken in order by the backend."""

    def __init__(self, receiver: "StatsReceiver", request_id: str, timeout: float, profile: str) -> None:
        self.request_id = request_id
        self.profile = profile  # the receiver's when the request was opened: a reload changes it for later ones
        self._receiver = receiver
        self._timeout = timeout
        self._ready: dict[int, StepFeatures] = {}
        self._arrived = asyncio.Event()
        self._next = 0
        self._waits = True

    def deliver(self, features: StepFeatures) -> None:
        """A worker's features for token ``features.index`` of this request."""
        if features.index < self._next:
            metrics.VLLM_STATS.labels("late").inc()
            return
        self._ready[features.index] = features
        self._waits = True
        self._arrived.set()

    async def take(self, index: int, token_id: int | None) -> StepFeatures | None:
        """Features of token ``index`` (waiting for them up to the timeout), stamped with ``token_id``."""
        if index not in self._ready and self._waits:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout
            while index not in self._ready and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
        self._next = index + 1
        features = self._ready.pop(index, None)
        if features is None:
            self._waits = False
            metrics.VLLM_STATS.labels("missing").inc()
            return None
        metrics.VLLM_STATS.labels("received").inc()
        if token_id is not None:
            features.token_id = token_id  # the stream's token is authoritative (async workers do not know it)
        return features

    def close(self) -> None:
        """Stop receiving for this request; anything still arriving counts as late."""
        self._receiver.forget(self.request_id)


class StatsReceiver:
    """Binds the PULL socket and routes each message's features to the open streams.

    ``bind`` is where the socket listens (``tcp://127.0.0.1:0`` picks a free port); ``address`` is what
    workers are told to connect to (default: the bound endpoint, which must then not be a wildcard).
    Messages computed with another monitoring ``profile`` than the gateway's are dropped (logged once); an
    uncalibrated gateway takes the worker's bands (``monitors.vllm_plugin.wire.profile_accepts``).
    """

    def __init__(self, bind: str, address: str, profile: str, timeout: float) -> None:
        self._bind = bind
        self._address = address
        self.profile = profile
        self.timeout = timeout
        self._context: zmq.asyncio.Context | None = None
        self._socket: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task | None = None
        self._streams: dict[str, FeatureStream] = {}
        self._foreign_profiles: set[tuple[str, str]] = set()  # (received, expected) pairs logged

    @property
    def address(self) -> str:
        """The ``tcp://host:port`` workers connect to."""
        if not self._address:
            raise RuntimeError("the statistics receiver is not started")
        return self._address

    async def start(self) -> None:
        if not self._address and urlsplit(self._bind).hostname in _WILDCARD_HOSTS:
            raise ValueError(f"--vllm-stats-bind {self._bind} listens everywhere: set --vllm-stats-address")
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(self._bind)
        bound = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._address = self._address or bound
        self._task = asyncio.create_task(self._receive())
        log.info("vLLM statistics: listening on %s, advertised as %s", bound, self._address)

    def open(self, request_id: str) -> FeatureStream:
        """Start collecting ``request_id``'s features (before the request is sent, so none are missed)."""
        stream = self._streams[request_id] = FeatureStream(self, request_id, self.timeout, self.profile)
        return stream

    def forget(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    async def _receive(self) -> None:
        while True:
            message = await self._socket.recv()
            try:
                self.dispatch(message)
            except ValueError as bad:
                log.warning("vLLM statistics: %s", bad)

    def dispatch(self, message: bytes) -> None:
        """Hand each feature set in ``message`` to its request's stream, if computed under the profile the
        stream expects."""
        profile, steps = decode_batch(message)
        for request_id, features in steps:
            stream = self._streams.get(request_id)
            if stream is None:
                metrics.VLLM_STATS.labels("late").inc()
            elif profile_accepts(stream.profile, profile):
                stream.deliver(features)
            elif (profile, stream.profile) not in self._foreign_profiles:
                self._foreign_profiles.add((profile, stream.profile))
                log.error("vLLM statistics computed with %r, not this gateway's %r: dropped", profile, stream.profile)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._socket is not None:
            self._socket.close()
        if self._context is not None:
            self._context.term()
