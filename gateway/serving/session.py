"""One request's generation as the client sees it: text deltas, finish reason, usage and stability.

Shared by both endpoints; they differ only in how they shape responses. Metrics for the request are
recorded here, once, when the session ends.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway import metrics
from gateway.backends.base import Backend
from gateway.errors import NotReady, OpenAIError
from gateway.generation import FinishEvent, GenerationEvent, GenerationRequest, TokenEvent
from gateway.protocol.common import Usage
from gateway.protocol.stability import StabilityReport
from gateway.serving.monitoring import RequestMonitor


@dataclass(frozen=True)
class RequestLabels:
    """Metric labels of a request: closed sets only."""

    model: str
    endpoint: str
    backend: str


class GenerationSession:
    """Drive a backend generation, monitor it, and record the request's metrics."""

    def __init__(
        self,
        backend: Backend,
        request: GenerationRequest,
        monitor: RequestMonitor | None,
        labels: RequestLabels,
        received_at: float,
    ) -> None:
        self.request = request
        self.monitor = monitor
        self.labels = labels
        self._backend = backend
        self._received_at = received_at
        self._events: AsyncIterator[GenerationEvent] | None = None
        self._first: GenerationEvent | None = None
        self._first_token_at: float | None = None
        self.finish: FinishEvent | None = None
        self._ended = False

    async def start(self) -> None:
        """Begin generating and wait for the first event, so that refusals become HTTP errors."""
        metrics.IN_FLIGHT.labels(self.labels.model, self.labels.endpoint).inc()
        try:
            if not self._backend.ready:
                raise NotReady("the model is still loading; retry shortly")
            self._events = self._backend.generate(self.request)
            self._first = await anext(self._events)
        except BaseException as exc:
            self._end(exc)
            raise

    async def deltas(self) -> AsyncIterator[str]:
        """Text pieces in order; afterwards ``finish``, ``usage`` and ``report()`` are set."""
        error: BaseException | None = None
        try:
            event = self._first
            while event is not None:
                if isinstance(event, FinishEvent):
                    self.finish = event
                    break
                text = self._observe(event)
                if text:
                    yield text
                event = await anext(self._events, None)
            if self.finish is None:
                raise OpenAIError("the backend ended the generation without finishing it")
        except BaseException as exc:
            error = exc
            raise
        finally:
            await self._events.aclose()
            self._end(error)

    def _observe(self, event: TokenEvent) -> str:
        if self.monitor is not None and event.features is not None:
            self.monitor.observe(event.features)
        if event.text and self._first_token_at is None:
            self._first_token_at = time.perf_counter()
            metrics.TIME_TO_FIRST_TOKEN.labels(*self._label_values).observe(self._first_token_at - self._received_at)
        return event.text

    @property
    def _label_values(self) -> tuple[str, str, str]:
        return self.labels.model, self.labels.endpoint, self.labels.backend

    @property
    def usage(self) -> Usage:
        finish = self.finish
        return Usage(
            prompt_tokens=finish.prompt_tokens,
            completion_tokens=finish.completion_tokens,
            total_tokens=finish.prompt_tokens + finish.completion_tokens,
        )

    def report(self) -> StabilityReport | None:
        """The stability report, or None when this request is not monitored or the policy is ``observe``."""
        if self.monitor is None or self.monitor.policy == "observe":
            return None
        return self.monitor.report()

    async def aclose(self) -> None:
        """Stop the generation if it is still running (client gone) and record the request once."""
        if self._events is not None:
            await self._events.aclose()
        self._end(asyncio.CancelledError())

    def _end(self, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        labels = self.labels
        metrics.IN_FLIGHT.labels(labels.model, labels.endpoint).dec()
        outcome = _outcome(error)
        if outcome == "ok":
            metrics.TOKENS.labels(labels.model, labels.backend, "input").inc(self.finish.prompt_tokens)
            metrics.TOKENS.labels(labels.model, labels.backend, "output").inc(self.finish.completion_tokens)
            metrics.COMPLETION_TOKENS.labels(labels.model, labels.backend).observe(self.finish.completion_tokens)
            if self.monitor is not None:
                self.monitor.record_metrics(labels.model)
        metrics.REQUESTS.labels(*self._label_values, outcome).inc()
        metrics.REQUEST_DURATION.labels(*self._label_values).observe(time.perf_counter() - self._received_at)


def _outcome(error: BaseException | None) -> str:
    """ok, client_error, server_error or cancelled."""
    if error is None:
        return "ok"
    if isinstance(error, OpenAIError):
        return "client_error" if error.status_code < 500 else "server_error"
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    return "server_error"
