"""One request's generation as the client sees it: text deltas, finish reason, usage and stability.

Shared by both endpoints; they differ only in how they shape responses. The gate controller decides
what text reaches the client; this module owns the request's lifecycle and records its metrics once,
when it ends.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gateway import metrics
from gateway.backends.base import Backend
from gateway.errors import ContentBlocked, NotReady, OpenAIError
from gateway.gate.controller import GateController
from gateway.gate.policy import GateConfig, Policy
from gateway.generation import GenerationEvent, GenerationRequest, StartEvent
from gateway.protocol.common import Usage
from gateway.protocol.stability import StabilityReport
from gateway.security.admission import charge_tokens
from gateway.serving.monitoring import RequestMonitor


@dataclass(frozen=True)
class RequestLabels:
    """Metric labels of a request: closed sets only."""

    model: str
    endpoint: str
    backend: str


class GenerationSession:
    """Drive a gated, monitored generation and record the request's metrics."""

    def __init__(
        self,
        backend: Backend,
        request: GenerationRequest,
        policy: Policy,
        gate_config: GateConfig,
        new_monitor: Callable[[], RequestMonitor | None],
        streaming: bool,
        labels: RequestLabels,
        received_at: float,
    ) -> None:
        self.request = request
        self.labels = labels
        self._backend = backend
        self._received_at = received_at
        self.gate = GateController(backend, request, policy, gate_config, new_monitor, streaming)
        self._events: AsyncIterator[GenerationEvent] | None = None
        self._first_text_at: float | None = None
        self._ended = False

    async def start(self) -> None:
        """Submit the request and wait until the backend accepts it, so that refusals become HTTP errors."""
        metrics.IN_FLIGHT.labels(self.labels.model, self.labels.endpoint).inc()
        try:
            if not self._backend.ready:
                raise NotReady("the model is still loading; retry shortly")
            self._events = self._backend.generate(self.request)
            first = await anext(self._events)
            if not isinstance(first, StartEvent):
                raise OpenAIError(f"backend {self._backend.name} did not start the generation properly")
            self.gate.result.prompt_tokens = first.prompt_tokens or 0
        except BaseException as exc:
            self._end(exc)
            raise

    async def deltas(self) -> AsyncIterator[str]:
        """Text pieces the client may see, in order; afterwards ``finish_reason``, ``usage``, ``report()``."""
        error: BaseException | None = None
        try:
            async for text in self.gate.run(self._events):
                if text:
                    self._note_first_text()
                    yield text
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(error)

    def _note_first_text(self) -> None:
        if self._first_text_at is None:
            self._first_text_at = time.perf_counter()
            metrics.TIME_TO_FIRST_TOKEN.labels(*self._label_values).observe(self._first_text_at - self._received_at)

    @property
    def _label_values(self) -> tuple[str, str, str]:
        return self.labels.model, self.labels.endpoint, self.labels.backend

    @property
    def finish_reason(self) -> str:
        return self.gate.result.finish_reason

    @property
    def usage(self) -> Usage:
        result = self.gate.result
        return Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )

    def report(self) -> StabilityReport | None:
        """The stability report, or None when the request is not monitored or the policy is ``observe``."""
        return self.gate.stability_report()

    async def aclose(self) -> None:
        """Stop the generation if it is still running (client gone) and record the request once."""
        if self._events is not None:
            await self._events.aclose()
        await self.gate.aclose()
        self._end(asyncio.CancelledError())

    def _end(self, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        labels = self.labels
        metrics.IN_FLIGHT.labels(labels.model, labels.endpoint).dec()
        outcome = _outcome(error)
        if outcome == "ok":
            self._record_tokens()
        if outcome == "ok" or isinstance(error, ContentBlocked):
            self._record_gate()
        metrics.REQUESTS.labels(*self._label_values, outcome).inc()
        metrics.REQUEST_DURATION.labels(*self._label_values).observe(time.perf_counter() - self._received_at)

    def _record_tokens(self) -> None:
        labels, result = self.labels, self.gate.result
        charge_tokens(result.prompt_tokens + result.generated_tokens)
        metrics.TOKENS.labels(labels.model, labels.backend, "input").inc(result.prompt_tokens)
        metrics.TOKENS.labels(labels.model, labels.backend, "output").inc(result.generated_tokens)
        metrics.COMPLETION_TOKENS.labels(labels.model, labels.backend).observe(result.completion_tokens)

    def _record_gate(self) -> None:
        labels, gate = self.labels, self.gate
        if gate.monitor is None:
            return
        metrics.VERDICTS.labels(labels.model, gate.detected.level.value if gate.detected else "ok").inc()
        gate.monitor.record_band_metrics(labels.model)
        gate.record_metrics(labels.model)


def _outcome(error: BaseException | None) -> str:
    """ok, client_error, server_error or cancelled."""
    if error is None:
        return "ok"
    if isinstance(error, OpenAIError):
        return "client_error" if error.status_code < 500 else "server_error"
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    return "server_error"
