"""One request's path through the gate: attempts, hold-back, block and rescue.

The controller consumes backend events, feeds the monitor, and yields only the text the client may
see. While the policy can act (block, rescue), streamed text goes through a :class:`HoldBack`, so that
when a collapse verdict fires, the tokens from the detector's stable point on were never sent:
``block`` ends there with ``finish_reason: "content_filter"`` (or an error); ``rescue`` keeps the
stable prefix and resamples from it with a request changed by a rescue strategy, within a bounded
number of attempts and discarded tokens, and falls back to ``block`` when that fails.

Each attempt gets a fresh detector primed with the accepted token ids: its text-level repetition sees
the whole answer, while smoothing, persistence and the hidden-state window start over (the backend's
window only holds the new attempt's tokens, so window signals resume once it is full again). The
monitor counts the detector's token indices from the start of the completion.
"""

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from gateway.errors import ContentBlocked, EngineFailure, OpenAIError
from gateway.gate.holdback import HoldBack, Slot, stable_prefix, token_ids
from gateway.gate.monitor import RequestMonitor, prefill_sampling
from gateway.gate.policy import GateConfig, Policy
from gateway.gate.rescue import STRATEGIES, neutralise
from gateway.generation import (
    Backend,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    StartEvent,
    TokenEvent,
    TokenLogprobs,
)
from gateway.protocol.stability import GateAttemptReport, GateReport, StabilityReport
from gateway.request_metrics import GateOutcome
from gateway.telemetry.spans import end_attempt_span, start_attempt_span
from monitors.verdict import UNCALIBRATED, Verdict, VerdictLevel

__all__ = ["Attempt", "GateController"]


@dataclass
class Attempt:
    """What one generation attempt produced and what the gate kept of it (indices in the completion)."""

    strategy: str | None
    offset: int = 0
    neutralised: tuple[str, ...] = ()
    verdict: VerdictLevel = VerdictLevel.OK
    fired_at: int | None = None
    rollback_to: int | None = None
    generated: int = 0
    kept: int = 0
    error: str | None = None

    def report(self) -> GateAttemptReport:
        """This attempt's part of the stability report."""
        return GateAttemptReport(
            strategy=self.strategy,
            neutralised=list(self.neutralised),
            verdict=self.verdict.value,
            fired_at_token=self.fired_at,
            rollback_to_token=self.rollback_to,
            tokens_generated=self.generated,
            tokens_kept=self.kept,
            error=self.error,
        )


@dataclass
class GateResult:
    """Everything the response and the report need once the controller has finished."""

    action: str = "pass"
    outcome: str | None = None
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generated_tokens: int = 0
    withheld_tokens: int = 0
    discarded_tokens: int = 0
    leaked_tokens: int = 0
    attempts: list[Attempt] = field(default_factory=list)


class GateController:
    """Runs the attempts of one request; iterate :meth:`run` for the text the client may see."""

    def __init__(
        self,
        backend: Backend,
        request: GenerationRequest,
        policy: Policy,
        config: GateConfig,
        new_monitor: Callable[[], RequestMonitor | None],
        streaming: bool,
    ) -> None:
        self._backend = backend
        self._request = request
        self.policy = policy
        self.config = config
        self._new_monitor = new_monitor
        # Tokens kept from the client behind generation: none when the policy cannot act, all (None)
        # when the answer is not streamed anyway.
        self.holdback: int | None = (config.holdback_tokens if streaming else None) if policy.acts else 0
        self._buffer = HoldBack(self.holdback)
        self.result = GateResult(action="annotate" if policy is Policy.ANNOTATE else "pass")
        self.monitor: RequestMonitor | None = None
        self._first_monitor: RequestMonitor | None = None
        self.detected: Verdict | None = None
        self.peak_risk: float | None = None
        self._events: AsyncIterator[GenerationEvent] | None = None
        self._dropped: list[Slot] = []
        self._logprobs_taken = 0

    async def run(self, events: AsyncIterator[GenerationEvent] | None) -> AsyncIterator[str]:
        """The client-visible text of every attempt, in order; ``events`` is the started first attempt."""
        request, strategy, neutralised = self._request, None, ()
        while True:
            attempt = Attempt(strategy, offset=len(self._buffer), neutralised=neutralised)
            self.result.attempts.append(attempt)
            span = start_attempt_span(len(self.result.attempts), strategy)
            try:
                if events is None:
                    events = await self._open(request, attempt)
                    if events is None:
                        self._block()
                        return
                async for text in self._attempt(events, attempt):
                    yield text
            finally:
                if span is not None:
                    end_attempt_span(span, attempt.report().model_dump())
            if attempt.fired_at is None:
                return
            rescue = self._rescue_request()
            if rescue is None:
                self._block()
                return
            (request, neutralised), events, strategy = rescue, None, self.config.rescue_strategy

    async def _attempt(self, events: AsyncIterator[GenerationEvent], attempt: Attempt) -> AsyncIterator[str]:
        """Run one attempt to its finish, or until a verdict fires under an acting policy."""
        self._events = events
        self.monitor = self._new_monitor()
        if self.monitor is not None:
            self.monitor.prime(token_ids(self._buffer.slots))
            if len(self.result.attempts) == 1:  # the client's own request: its prompt and sampling
                self.monitor.expect_prefill(prefill_sampling(self._request.sampling))
                self._first_monitor = self.monitor
        gated = self.policy.acts and self.monitor is not None and self.monitor.judges
        finish: FinishEvent | None = None
        fired = False
        try:
            async for event in events:
                if isinstance(event, StartEvent):
                    continue
                if isinstance(event, FinishEvent):
                    finish = event
                    break
                verdict = self._take(event)
                if fired := gated and verdict is not None and self.config.acts_on(verdict):
                    break
                if text := self._releasable(attempt, gated):
                    yield text
        finally:
            await events.aclose()
        if finish is None and not fired:
            raise EngineFailure(f"backend {self._backend.name} ended the generation without finishing it")
        attempt.generated = len(token_ids(self._buffer.slots[attempt.offset :]))
        self.result.generated_tokens += attempt.generated
        if self.monitor is not None and self.monitor.tokens:
            self._note(attempt, self.monitor.verdict)
        if finish is not None:
            if text := self._buffer.release_upto(len(self._buffer)):
                yield text
            self._finish(finish, attempt)
            return
        if text := self._roll_back(attempt):
            yield text

    def _take(self, event: TokenEvent) -> Verdict | None:
        """Buffer a token and show it to the monitor; the verdict when it had features."""
        self._buffer.add(event.text, event.token_id, event.logprobs)
        if self.monitor is None or event.features is None:
            return None
        return self.monitor.observe(event.features)

    def _releasable(self, attempt: Attempt, gated: bool) -> str:
        """Everything when ungated; otherwise what the hold-back lets through of what the detector vouches for."""
        if not gated:
            return self._buffer.release_upto(len(self._buffer))
        return self._buffer.release(max(stable_prefix(self.monitor.verdict), attempt.offset))

    def _note(self, attempt: Attempt, verdict: Verdict) -> None:
        attempt.verdict = verdict.level
        if verdict.risk is not None:
            self.peak_risk = max(verdict.risk, self.peak_risk or 0.0)
        if self.detected is None or verdict.level.severity > self.detected.level.severity:
            self.detected = verdict

    def _roll_back(self, attempt: Attempt) -> str:
        """After a verdict fired: cut at its stable point, release the accepted rest, drop the others."""
        verdict = self.monitor.verdict
        attempt.fired_at = verdict.token_index
        cut, leaked = self._buffer.cut_for(verdict, floor=attempt.offset)
        attempt.rollback_to = cut
        self.result.leaked_tokens += leaked
        text = self._buffer.release_upto(cut)
        self._dropped = self._buffer.truncate(cut)
        attempt.kept = attempt.generated - len(token_ids(self._dropped))
        self.result.completion_tokens += attempt.kept
        return text

    def _rescue_request(self) -> tuple[GenerationRequest, tuple[str, ...]] | None:
        """The next attempt's request and the client's sampling parameters it neutralised, or None when the
        policy, attempts or token budget say block."""
        result, config = self.result, self.config
        rescues_done = len(result.attempts) - 1
        lost = len(token_ids(self._dropped))
        within_budget = result.discarded_tokens + lost <= config.rescue_token_budget
        if self.policy is not Policy.RESCUE or rescues_done >= config.rescue_attempts or not within_budget:
            result.withheld_tokens += lost
            return None
        result.discarded_tokens += lost
        original = self._request
        max_tokens = original.sampling.max_tokens
        if max_tokens is not None:
            max_tokens -= result.completion_tokens
        base = replace(
            original,
            request_id=f"{original.request_id}-rescue{rescues_done + 1}",
            continuation=original.continuation + self._buffer.text(),
            sampling=replace(original.sampling, max_tokens=max_tokens),
        )
        strategy = STRATEGIES[config.rescue_strategy]
        failed_ids = token_ids(self._buffer.slots) + token_ids(self._dropped)
        sampling, neutralised = neutralise(base.sampling, failed_ids)
        return strategy(replace(base, sampling=sampling), failed_ids, rescues_done + 1), neutralised

    async def _open(self, request: GenerationRequest, attempt: Attempt) -> AsyncIterator[GenerationEvent] | None:
        """Start a rescue attempt; None (noted on the attempt) when the backend refuses it."""
        events = self._backend.generate(request)
        try:
            first = await anext(events)
        except OpenAIError as refused:
            await events.aclose()
            attempt.error = refused.message
            return None
        if not isinstance(first, StartEvent):
            await events.aclose()
            attempt.error = f"backend {self._backend.name} did not start the generation properly"
            return None
        return events

    def _finish(self, finish: FinishEvent, attempt: Attempt) -> None:
        result = self.result
        attempt.kept = attempt.generated
        result.finish_reason = finish.finish_reason
        result.completion_tokens += finish.completion_tokens
        if not result.prompt_tokens:
            # The backend could not count the prompt up front; a rescue's prompt includes the accepted text.
            result.prompt_tokens = finish.prompt_tokens - (result.completion_tokens - finish.completion_tokens)
        if len(result.attempts) > 1:
            result.action, result.outcome = "rescue", "rescued"

    def _block(self) -> None:
        result = self.result
        result.action = "block"
        result.outcome = "rescue_failed" if self.policy is Policy.RESCUE else "blocked"
        result.finish_reason = "content_filter"
        if self.config.block_mode == "error":
            level = self.detected.level.value if self.detected else "unknown"
            raise ContentBlocked(f"the generation collapsed (sinkwatch verdict: {level}) and was blocked")

    def take_released_logprobs(self) -> list[TokenLogprobs]:
        """The log-probabilities of the tokens released since the last call, in order (released tokens are
        never rolled back, so each is handed out once and only if the client got its text)."""
        released = self._buffer.released
        taken = self._buffer.slots[self._logprobs_taken : released]
        self._logprobs_taken = released
        return [slot.logprobs for slot in taken if slot.logprobs is not None]

    @property
    def completion_ids(self) -> list[int]:
        """Token ids of the answer so far (accepted prefixes and the current attempt)."""
        return token_ids(self._buffer.slots)

    async def aclose(self) -> None:
        """Stop the attempt under way (the client went away)."""
        if self._events is not None:
            await self._events.aclose()

    @property
    def refused(self) -> bool:
        """Block or rescue asked for on a model without a calibration: the gate does not act (on nothing)."""
        return self.policy.acts and self.monitor is not None and not self.monitor.judges

    def report(self) -> GateReport:
        """The gate's section of the stability report."""
        result = self.result
        return GateReport(
            action="none" if self.refused else result.action,
            reason=UNCALIBRATED if self.refused else None,
            outcome=result.outcome,
            detected=self.detected.level.value if self.detected else "ok",
            block_at=self.config.block_at or None,
            holdback_tokens=self.holdback,
            tokens_withheld=result.withheld_tokens,
            tokens_discarded=result.discarded_tokens,
            tokens_leaked=result.leaked_tokens,
            attempts=[attempt.report() for attempt in result.attempts],
        )

    def stability_report(self) -> StabilityReport | None:
        """The ``stability`` object: the last attempt's verdict and statistics, with the gate's section.

        None when the request is not monitored or the policy is ``observe``.
        """
        if self.monitor is None or self.policy is Policy.OBSERVE:
            return None
        report = self.monitor.report()
        report.policy = self.policy.value
        report.prefill_risk = self.prefill_risk
        report.gate = self.report()
        return report

    @property
    def prefill_risk(self) -> float | None:
        """The request's prefill risk (its first attempt's: the client's prompt and sampling)."""
        return self._first_monitor.prefill_risk if self._first_monitor is not None else None

    def outcome(self) -> GateOutcome | None:
        """What the monitors and the gate concluded, for the metrics; None when the request is not monitored."""
        if self.monitor is None:
            return None
        result = self.result
        detected = self.detected
        rescue = None
        if self.policy is Policy.RESCUE and result.outcome is not None:
            rescue = "success" if result.outcome == "rescued" else "fallback_block"
        verdict = detected.level.value if detected else "ok"
        return GateOutcome(
            policy=self.policy.value,
            action="none" if self.refused else result.action,
            verdict=verdict if self.monitor.judges else UNCALIBRATED,
            fired=bool(detected and detected.fired),
            rescue=rescue,
            rescue_attempts=tuple(
                "failed" if attempt.error or attempt.fired_at is not None else "success"
                for attempt in result.attempts[1:]
            ),
            withheld_tokens=result.withheld_tokens,
            discarded_tokens=result.discarded_tokens,
            band_stats=self.monitor.band_stats(),
            risk=self.peak_risk,
            prefill_risk=self.prefill_risk,
        )
