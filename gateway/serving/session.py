"""One request's generation as the client sees it: text deltas, finish reason, usage and stability.

Shared by both endpoints; they differ only in how they shape responses. The gate controller decides
what text reaches the client; this module owns the request's lifecycle and records its metrics once,
when it ends (and what the access line and the trace say of it, in the request's scope).
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gateway.errors import ContentBlocked, NotReady, OpenAIError
from gateway.gate.controller import GateController
from gateway.gate.monitor import RequestMonitor
from gateway.gate.policy import GateConfig, Policy
from gateway.generation import Backend, GenerationEvent, GenerationRequest, StartEvent
from gateway.protocol.common import Usage
from gateway.protocol.stability import StabilityReport
from gateway.request_metrics import RequestSeries, outcome_of
from gateway.security.admission import charge_tokens
from gateway.telemetry.request_scope import current_scope

__all__ = ["GenerationSession", "RequestLabels"]


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
        self._series = RequestSeries.of(labels.model, labels.endpoint, labels.backend)
        self.gate = GateController(backend, request, policy, gate_config, new_monitor, streaming)
        self._events: AsyncIterator[GenerationEvent] | None = None
        self._first_text_at: float | None = None
        self._ended = False
        self._scope = current_scope()
        if self._scope is not None:
            self._scope.served(labels.endpoint, labels.model)
            self._scope.policy = policy.value

    async def start(self) -> None:
        """Submit the request and wait until the backend accepts it, so that refusals become HTTP errors."""
        self._series.begin()
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
            self._series.first_token(self._received_at, self._first_text_at)
            if self._scope is not None:
                self._scope.first_token_at = self._first_text_at

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
        outcome = outcome_of(error)
        result = self.gate.result
        if outcome == "ok":
            self._series.tokens(result.prompt_tokens, result.generated_tokens, result.completion_tokens)
            charge_tokens(result.prompt_tokens + result.generated_tokens)
        gate = self.gate.outcome()
        if gate is not None and (outcome == "ok" or isinstance(error, ContentBlocked)):
            self._series.stability(gate)
        self._series.end(self._received_at, outcome)
        if self._scope is not None:
            self._describe(outcome)

    def _describe(self, outcome: str) -> None:
        """What the access line and the span say of this generation: tokens, finish, verdict, gate."""
        scope, gate, result = self._scope, self.gate, self.gate.result
        scope.input_tokens = result.prompt_tokens
        if outcome == "ok":
            scope.output_tokens = result.completion_tokens
            scope.finish_reasons = (result.finish_reason,)
        if gate.monitor is not None:
            detected = gate.detected
            scope.verdict = detected.level.value if detected else "ok"
            scope.reasons = tuple(reason.signal for reason in detected.reasons) if detected else ()
            scope.gate_action, scope.gate_outcome = result.action, result.outcome
