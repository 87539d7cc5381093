"""One request's generations as the client sees them: text pieces per choice, finish reasons, usage and stability.

Shared by both endpoints; they differ only in how they shape responses. A request for ``n`` choices runs
``n`` generations of its prompt, each with its own gate (monitor, hold-back, block, rescue): the choices
are independent answers. The gate controllers decide what text reaches the client; this module owns the
request's lifecycle and records its metrics once, when it ends (and what the access line and the trace say
of it, in the request's scope).
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from gateway.errors import ContentBlocked, NotReady, OpenAIError
from gateway.gate.controller import GateController
from gateway.gate.monitor import RequestMonitor
from gateway.gate.policy import GateConfig, Policy
from gateway.generation import Backend, GenerationEvent, GenerationRequest, StartEvent, TokenLogprobs
from gateway.protocol.common import Usage
from gateway.protocol.stability import StabilityReport, worst_of
from gateway.request_metrics import RequestSeries, outcome_of
from gateway.security.admission import charge_tokens
from gateway.telemetry.request_scope import current_scope

__all__ = ["ChoiceEnd", "GenerationSession", "Piece", "RequestLabels"]


@dataclass(frozen=True)
class RequestLabels:
    """Metric labels of a request: closed sets only."""

    model: str
    endpoint: str
    backend: str


@dataclass(frozen=True, slots=True)
class Piece:
    """Text one choice adds for the client, with the log-probabilities of the tokens released with it."""

    choice: int
    text: str
    logprobs: tuple[TokenLogprobs, ...] = ()


@dataclass(frozen=True, slots=True)
class ChoiceEnd:
    """A choice has finished: its finish reason and report are known."""

    choice: int


class GenerationSession:
    """Drive the gated, monitored generations of one request and record the request's metrics."""

    def __init__(
        self,
        backend: Backend,
        requests: Sequence[GenerationRequest],
        policy: Policy,
        gate_config: GateConfig,
        new_monitor: Callable[[], RequestMonitor | None],
        streaming: bool,
        labels: RequestLabels,
        received_at: float,
    ) -> None:
        self.request = requests[0]
        self.labels = labels
        self._backend = backend
        self._requests = requests
        self._received_at = received_at
        self._series = RequestSeries.of(labels.model, labels.endpoint, labels.backend)
        self.gates = [GateController(backend, r, policy, gate_config, new_monitor, streaming) for r in requests]
        self._events: list[AsyncIterator[GenerationEvent]] = []
        self._tasks: list[asyncio.Task] = []
        self._first_text_at: float | None = None
        self._ended = False
        self._scope = current_scope()
        if self._scope is not None:
            self._scope.served(labels.endpoint, labels.model)
            self._scope.policy = policy.value

    @property
    def n(self) -> int:
        """How many choices the request asked for."""
        return len(self.gates)

    async def start(self) -> None:
        """Submit every choice and wait until the backend accepts each, so that refusals become HTTP errors."""
        self._series.begin()
        try:
            if not self._backend.ready:
                raise NotReady("the model is still loading; retry shortly")
            for gate, request in zip(self.gates, self._requests, strict=True):
                events = self._backend.generate(request)
                self._events.append(events)
                first = await anext(events)
                if not isinstance(first, StartEvent):
                    raise OpenAIError(f"backend {self._backend.name} did not start the generation properly")
                gate.result.prompt_tokens = first.prompt_tokens or 0
        except BaseException as exc:
            for events in self._events:
                await events.aclose()
            self._end(exc)
            raise

    async def updates(self) -> AsyncIterator[Piece | ChoiceEnd]:
        """What the client may see, in order: each choice's pieces and then its end, choices interleaved as
        they generate. Afterwards ``finish_reason``, ``usage`` and the reports hold."""
        error: BaseException | None = None
        try:
            async for update in self._choice(0) if self.n == 1 else self._merged():
                yield update
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(error)

    async def _choice(self, index: int) -> AsyncIterator[Piece | ChoiceEnd]:
        """One choice through its gate."""
        gate = self.gates[index]
        async for text in gate.run(self._events[index]):
            self._note_first_text()
            yield Piece(index, text, tuple(gate.take_released_logprobs()))
        if rest := gate.take_released_logprobs():  # tokens released without text of their own
            yield Piece(index, "", tuple(rest))
        yield ChoiceEnd(index)

    async def _merged(self) -> AsyncIterator[Piece | ChoiceEnd]:
        """Every choice at once, each on its own task; the first failure ends them all."""
        updates: asyncio.Queue[Piece | ChoiceEnd | Exception] = asyncio.Queue()

        async def drive(index: int) -> None:
            try:
                async for update in self._choice(index):
                    updates.put_nowait(update)
            except Exception as exc:  # handed to the consumer, which raises it
                updates.put_nowait(exc)

        self._tasks = [asyncio.create_task(drive(index)) for index in range(self.n)]
        try:
            ended = 0
            while ended < self.n:
                update = await updates.get()
                if isinstance(update, Exception):
                    raise update
                ended += isinstance(update, ChoiceEnd)
                yield update
        finally:
            await self._stop_choices()

    async def _stop_choices(self) -> None:
        """Cancel the choices' tasks still running and wait until they have closed their generations."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _note_first_text(self) -> None:
        if self._first_text_at is None:
            self._first_text_at = time.perf_counter()
            self._series.first_token(self._received_at, self._first_text_at)
            if self._scope is not None:
                self._scope.first_token_at = self._first_text_at

    def finish_reason(self, choice: int = 0) -> str:
        """Why a choice ended."""
        return self.gates[choice].result.finish_reason

    @property
    def usage(self) -> Usage:
        """The prompt once, and the completion tokens of every choice."""
        prompt = max(gate.result.prompt_tokens for gate in self.gates)
        completion = sum(gate.result.completion_tokens for gate in self.gates)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def choice_report(self, choice: int) -> StabilityReport | None:
        """One choice's stability report, or None when it is not monitored or the policy is ``observe``."""
        return self.gates[choice].stability_report()

    def report(self) -> StabilityReport | None:
        """The top-level stability report: the only choice's, or the worst choice's (naming it) when n > 1."""
        if self.n == 1:
            return self.choice_report(0)
        reports = [(index, report) for index in range(self.n) if (report := self.choice_report(index))]
        if not reports:
            return None
        worst = worst_of([report for _, report in reports])
        return worst.model_copy(update={"choice": reports[worst.choice][0]})

    async def aclose(self) -> None:
        """Stop the generations still running (client gone) and record the request once."""
        await self._stop_choices()
        for events in self._events:
            await events.aclose()
        for gate in self.gates:
            await gate.aclose()
        self._end(asyncio.CancelledError())

    def _end(self, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        outcome = outcome_of(error)
        if outcome == "ok":
            results = [gate.result for gate in self.gates]
            generated = sum(result.generated_tokens for result in results)
            self._series.tokens(self.usage.prompt_tokens, generated, self.usage.completion_tokens)
            charge_tokens(self.usage.prompt_tokens + generated)
            for gate in self.gates:
                if gate.monitor is not None:
                    gate.monitor.finish(gate.result.finish_reason, gate.completion_ids)
        for gate in self.gates:
            gate_outcome = gate.outcome()
            if gate_outcome is not None and (outcome == "ok" or isinstance(error, ContentBlocked)):
                self._series.stability(gate_outcome)
        self._series.end(self._received_at, outcome)
        if self._scope is not None:
            self._describe(outcome)

    def _describe(self, outcome: str) -> None:
        """What the access line and the span say of this request: tokens, every choice's finish, and the
        verdict and gate action of its worst choice (the only one when n is 1)."""
        scope, usage = self._scope, self.usage
        scope.input_tokens = usage.prompt_tokens
        if outcome == "ok":
            scope.output_tokens = usage.completion_tokens
            scope.finish_reasons = tuple(gate.result.finish_reason for gate in self.gates)
        monitored = [gate for gate in self.gates if gate.monitor is not None]
        if monitored:
            gate = max(monitored, key=lambda g: g.detected.level.severity if g.detected else -1)
            detected = gate.detected
            scope.verdict = detected.level.value if detected else "ok"
            scope.reasons = tuple(reason.signal for reason in detected.reasons) if detected else ()
            scope.gate_action, scope.gate_outcome = gate.result.action, gate.result.outcome
