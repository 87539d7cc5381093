"""One relayed request: the upstream's answer as it sent it, gated per choice, with the stability reports added.

Streams come out as the upstream's chunks (one choice per chunk, as vLLM sends them), each released once
its choice's hold-back releases the tokens it carries. Each choice's finish chunk is held to the end of
the stream, where it gets its own report (``choices[i].stability`` when there are several choices); the
top-level ``stability`` (:func:`~gateway.protocol.stability.worst_of` the choices' reports) rides on the
last chunk before ``[DONE]``: the usage chunk when the client asked for usage, else the last finish
chunk. A choice that collapses under ``block`` ends with ``finish_reason: "content_filter"``, cut at the
detector's stable point, streamed or whole (:mod:`gateway.relay.whole_cut`). Under ``rescue`` a plain
streamed answer is continued from its stable point (what is stable streams under the hold-back; the
backend must continue a partial answer), anything else is held whole and resampled from its start
(:mod:`gateway.relay.resample`), within the gate's attempts and token budget, then blocked if that fails.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import ContentBlocked, EngineFailure, OpenAIError
from gateway.gate.controller import Attempt
from gateway.gate.monitor import RequestMonitor, prefill_sampling
from gateway.gate.policy import GateConfig, Policy
from gateway.protocol.stability import GateReport, StabilityReport, worst_of
from gateway.relay.choice_gate import ChoiceGate
from gateway.relay.resample import body_sampling, continuable, continuation_body, resample_body
from gateway.relay.seam import (
    ChoiceToken,
    Fragment,
    RelayBackend,
    RelayCall,
    RelayItem,
    RelayStart,
    Trailer,
    WholeAnswer,
)
from gateway.relay.whole_cut import cut_choice
from gateway.request_metrics import GateOutcome, RequestSeries, outcome_of
from gateway.telemetry.request_scope import current_scope
from gateway.telemetry.spans import end_attempt_span, start_attempt_span
from monitors.verdict import UNCALIBRATED, Verdict

__all__ = ["RelaySession", "unmonitored_report"]


def unmonitored_report(reason: str, policy: Policy) -> StabilityReport:
    """The report of an answer relayed without monitoring, and why."""
    return StabilityReport(verdict="unmonitored", reason=reason, policy=policy.value)


@dataclass
class _Choice:
    """Every attempt at one choice, and what the gate did with them."""

    gate: ChoiceGate
    attempts: list[Attempt] = field(default_factory=list)
    span: Any = None  # the current attempt's span (None when not traced)
    accepted_text: str = ""  # continued rescues: the content accepted before the current attempt
    first_monitor: RequestMonitor | None = None
    detected: Verdict | None = None
    withheld: int = 0
    discarded: int = 0
    leaked: int = 0
    blocked: bool = False

    @property
    def prefill_risk(self) -> float | None:
        """The choice's prefill risk (its first attempt's)."""
        return self.first_monitor.prefill_risk if self.first_monitor is not None else None

    def note(self, gate: ChoiceGate) -> None:
        """Note the worst verdict an attempt reached."""
        verdict = gate.monitor.verdict if gate.monitor is not None and gate.monitor.tokens else None
        if verdict is not None and (self.detected is None or verdict.level.severity > self.detected.level.severity):
            self.detected = verdict

    def end_span(self) -> None:
        """End the current attempt's span with the attempt's report."""
        if self.span is not None:
            end_attempt_span(self.span, self.gate.attempt.report().model_dump())
            self.span = None


class RelaySession:
    """Relay one request through a :class:`RelayBackend`, gating each choice; record its metrics once.

    ``monitors`` is False when the gateway has no calibration to judge with (the request is then marked
    unmonitored, ``uncalibrated``)."""

    def __init__(
        self,
        backend: RelayBackend,
        call: RelayCall,
        policy: Policy,
        config: GateConfig,
        new_monitor: Callable[[], RequestMonitor | None],
        series: RequestSeries,
        received_at: float,
        include_usage: bool,
        monitors: bool = True,
    ) -> None:
        self.call = call
        self.policy = policy
        self._backend = backend
        self._config = config
        self._new_monitor = new_monitor
        self._monitors = monitors
        self._series = series
        self._received_at = received_at
        self._include_usage = include_usage
        self._items: AsyncIterator[RelayItem] | None = None
        self._choices: dict[int, _Choice] = {}
        self._usage: dict | None = None
        self._ended = False
        self.unmonitored: str | None = None
        self.chat = call.path.endswith("/chat/completions")
        self._first_output = False
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        self._envelope: dict = {"id": call.request_id, "object": kind, "model": call.model}
        self._finish_reasons: tuple[str, ...] = ()
        self._finish_by_choice: dict[int, str] = {}
        # Under rescue a plain streamed answer is continued from its stable point (what is stable streams under
        # the hold-back); anything else is held whole and resampled from its start.
        self._continues = policy is Policy.RESCUE and call.stream and backend.continues and continuable(call.body)
        self._scope = current_scope()  # what the access line and the trace say of this request
        if self._scope is not None:
            self._scope.served("chat" if self.chat else "completions", call.model)
            self._scope.policy = policy.value

    async def start(self) -> None:
        """Send the request; the upstream's refusal (4xx as it sent it) raises here, before any byte is sent."""
        self._series.begin()
        try:
            self._items = self._backend.relay(self.call)
            first = await anext(self._items)
            if not isinstance(first, RelayStart):
                raise EngineFailure(f"backend {self._backend.name} did not start the relay properly")
            self.unmonitored = first.unmonitored
            if self.unmonitored is None and not self._monitors:
                self.unmonitored = "uncalibrated"
            if self.unmonitored is not None:
                RequestSeries.unmonitored(self.unmonitored)
        except BaseException as exc:
            self._end(exc)
            raise

    # -- streams --------------------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[dict]:
        """The chunks to send, in order, reports included; the request's metrics are recorded at the end."""
        error: BaseException | None = None
        try:
            async for event in self._stream():
                yield event
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(error)

    async def _stream(self) -> AsyncIterator[dict]:
        finishes: dict[int, Fragment] = {}
        trailers: list[dict] = []
        async for fragment in self._relay_stream(self._items, finishes, trailers):
            self._note_first_output()
            yield _chunk(fragment)
        for choice in self._choices.values():  # tokens may have come after their choice ended (ungated)
            choice.gate.settle()
            choice.note(choice.gate)
        for index, choice in sorted(self._choices.items()):
            if choice.gate.fired is not None and index not in finishes:
                async for fragment in self._rescue_stream(index, choice, finishes):
                    yield _chunk(fragment)
        async for event in self._closing(finishes, trailers):
            yield event

    async def _relay_stream(
        self, items: AsyncIterator[RelayItem], finishes: dict[int, Fragment], trailers: list[dict], index: int = -1
    ) -> AsyncIterator[Fragment]:
        """The releasable fragments of one upstream stream (``index`` >= 0: a resample of that choice)."""
        try:
            async for item in items:
                if isinstance(item, Trailer):
                    if index < 0:
                        trailers.append(item.event)
                    continue
                if isinstance(item, RelayStart | WholeAnswer):
                    raise EngineFailure("the upstream answered a stream with a whole answer")
                target = item.index if index < 0 else index
                gate = self._choice(target).gate
                if isinstance(item, ChoiceToken):
                    fired_before = gate.fired is not None
                    gate.add_token(item)
                    if gate.fired is not None and not fired_before:
                        for fragment in self._on_fired(target, finishes):
                            yield fragment
                        if index >= 0 or self.call.choices == 1:
                            return  # the stream's only choice: nothing more is needed from it
                    continue
                if gate.fired is not None:
                    continue
                fragment = item if index < 0 else Fragment(index, item.envelope, {**item.choice, "index": index})
                self._envelope = fragment.envelope
                gate.add_fragment(fragment)
                if fragment.choice.get("finish_reason") is not None:
                    *released, finishes[target] = gate.finish()
                    self._choices[target].note(gate)
                else:
                    released = gate.releasable()
                for out in released:
                    yield out
        finally:
            await items.aclose()

    def _on_fired(self, index: int, finishes: dict[int, Fragment]) -> list[Fragment]:
        """A choice collapsed: it is resampled later if it may be, else blocked now (what the detector vouched
        for before the cut still goes out)."""
        choice = self._choices[index]
        choice.note(choice.gate)
        choice.leaked += choice.gate.leaked
        if self._rescuable(choice):
            return choice.gate.cut() if choice.gate.lag is not None else []  # continued: the stable part goes out
        return self._block(index, finishes)

    def _block(self, index: int, finishes: dict[int, Fragment]) -> list[Fragment]:
        choice = self._choices[index]
        kept = choice.gate.cut()
        choice.withheld += choice.gate.withheld
        finishes[index] = self._blocked_fragment(index)
        return kept

    async def _rescue_stream(self, index: int, choice: _Choice, finishes: dict[int, Fragment]) -> AsyncIterator:
        """Continue or resample a collapsed choice until an attempt holds or the gate gives up."""
        while True:
            call = self._resample_call(index, choice)
            items = self._backend.relay(call)
            try:
                await anext(items)
            except OpenAIError as refused:
                choice.gate.attempt.error = refused.message
                await items.aclose()
                for fragment in self._block(index, finishes):
                    yield fragment
                return
            async for fragment in self._relay_stream(items, finishes, [], index):
                yield fragment
            if choice.gate.fired is None or index in finishes:
                return

    def _resample_call(self, index: int, choice: _Choice) -> RelayCall:
        """The next attempt at a collapsed choice (a fresh gate for it): from its stable point when it was
        streamed under the hold-back (plain content), else from its start."""
        failed = choice.gate
        continued = failed.lag is not None  # streamed under the hold-back: resumed from its stable point
        accepted = failed.token_ids[: failed.attempt.rollback_to] if continued else []
        choice.discarded += failed.attempt.generated - (failed.attempt.kept if continued else 0)
        choice.end_span()
        number = len(choice.attempts)
        body, neutralised = resample_body(self.call.body, self._config.rescue_strategy, failed.token_ids, number)
        if continued:
            choice.accepted_text += failed.sent_text
            body = continuation_body(body, choice.accepted_text, len(accepted))
        choice.gate = self._new_gate(self._config.rescue_strategy, accepted)
        choice.gate.attempt.neutralised = neutralised
        choice.attempts.append(choice.gate.attempt)
        choice.span = self._attempt_span(number + 1, index)
        return RelayCall(self.call.path, body, self.call.model, f"{self.call.request_id}-rescue{number}")

    def _rescuable(self, choice: _Choice) -> bool:
        """Whether a collapsed choice may be resampled once more: rescue, attempts and budget left."""
        config = self._config
        rescues_done = len(choice.attempts) - 1
        lost = choice.discarded + choice.gate.attempt.generated
        continues = choice.gate.lag is None or set(choice.gate.covered) <= {"content"}
        return (
            self.policy is Policy.RESCUE
            and continues  # a streamed choice that is not plain content cannot be resumed, nor resent
            and rescues_done < config.rescue_attempts
            and lost <= config.rescue_token_budget
            and choice.gate.attempt.error is None
        )

    def _blocked_fragment(self, index: int) -> Fragment:
        """The finish of a blocked choice: ``content_filter``, nothing more of it (or the error, if so set)."""
        choice = self._choices[index]
        choice.blocked = True
        if self._config.block_mode == "error":
            level = choice.detected.level.value if choice.detected else "unknown"
            raise ContentBlocked(f"the generation collapsed (sinkwatch verdict: {level}) and was blocked")
        body = {"delta": {}} if self.chat else {"text": ""}
        return Fragment(index, self._envelope, {"index": index, **body, "finish_reason": "content_filter"})

    async def _closing(self, finishes: dict[int, Fragment], trailers: list[dict]) -> AsyncIterator[dict]:
        """Finish chunks with their reports, then the trailers; the top-level report on the last chunk."""
        reports = self._reports()
        top = self.report(reports)
        self._finish_reasons = tuple(str(f.choice.get("finish_reason")) for _, f in sorted(finishes.items()))
        self._finish_by_choice = {index: str(f.choice.get("finish_reason")) for index, f in finishes.items()}
        usage = next((t for t in trailers if isinstance(t.get("usage"), dict)), None)
        self._usage = usage["usage"] if usage is not None else None
        trailers = [t for t in trailers if t is not usage or self._include_usage]
        closing = [
            {**fragment.envelope, "choices": [self._with_report(fragment.choice, reports.get(index))]}
            for index, fragment in sorted(finishes.items())
        ]
        closing += trailers
        if top is not None and closing:
            closing[-1] = {**closing[-1], "stability": top.model_dump(mode="json")}
        for event in closing:
            yield event

    # -- whole answers --------------------------------------------------------------------------------------

    async def whole(self) -> dict:
        """The upstream's answer with each choice gated and the reports added."""
        error: BaseException | None = None
        try:
            return await self._whole()
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(error)

    async def _whole(self) -> dict:
        answer = await anext(self._items)
        await self._items.aclose()
        if not isinstance(answer, WholeAnswer):
            raise EngineFailure("the upstream streamed an answer that was asked whole")
        body = answer.body
        self._usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        choices = body.get("choices") or []
        for position, raw in enumerate(choices):
            index = raw.get("index", position) if isinstance(raw, dict) else position
            choice = self._choice(index)
            tokens = answer.tokens.get(index, [])
            for token in tokens:
                choice.gate.add_token(token)
            choices[position] = await self._settle_whole(index, choice, raw, _texts(tokens))
        reports = self._reports()
        self._finish_reasons = tuple(str(raw.get("finish_reason")) for raw in choices if isinstance(raw, dict))
        self._finish_by_choice = {
            raw.get("index", position): str(raw.get("finish_reason"))
            for position, raw in enumerate(choices)
            if isinstance(raw, dict)
        }
        for position, raw in enumerate(choices):
            index = raw.get("index", position)
            choices[position] = self._with_report(raw, reports.get(index))
        top = self.report(reports)
        return {**body, "stability": top.model_dump(mode="json")} if top is not None else body

    async def _settle_whole(self, index: int, choice: _Choice, raw: dict, texts: list[str]) -> dict:
        """A whole choice as the client gets it: as sent, resampled, or blocked (cut at the stable point of
        its last collapsed attempt, whose tokens' ``texts`` say where that is in the message)."""
        collapsed = choice.gate
        if choice.gate.fired is not None:
            choice.note(choice.gate)
        while choice.gate.fired is not None and self._rescuable(choice):
            collapsed = choice.gate
            try:
                answer = await self._resample_whole(self._resample_call(index, choice))
            except OpenAIError as refused:
                choice.gate.attempt.error = refused.message
                break
            tokens = answer.tokens.get(0, [])
            for token in tokens:
                choice.gate.add_token(token)
            choice.note(choice.gate)
            raw, texts = {**(answer.body.get("choices") or [{}])[0], "index": index}, _texts(tokens)
        if choice.gate.fired is None and choice.gate.attempt.error is None:
            choice.gate.finish()
            choice.note(choice.gate)
            return raw
        collapsed = choice.gate if choice.gate.fired is not None else collapsed
        kept = collapsed.attempt.kept = collapsed.attempt.rollback_to or 0
        choice.withheld += collapsed.attempt.generated - kept
        self._blocked_fragment(index)
        return cut_choice(raw, texts, kept)

    async def _resample_whole(self, call: RelayCall) -> WholeAnswer:
        items = self._backend.relay(call)
        try:
            await anext(items)
            answer = await anext(items)
        finally:
            await items.aclose()
        if not isinstance(answer, WholeAnswer):
            raise EngineFailure("the upstream streamed an answer that was asked whole")
        return answer

    # -- choices, reports, metrics ---------------------------------------------------------------------------

    def _choice(self, index: int) -> _Choice:
        choice = self._choices.get(index)
        if choice is None:
            gate = self._new_gate(None)
            if gate.monitor is not None:  # the client's own request: its prompt and sampling
                gate.monitor.expect_prefill(prefill_sampling(body_sampling(self.call.body)))
            choice = self._choices[index] = _Choice(gate, [gate.attempt], first_monitor=gate.monitor)
            choice.span = self._attempt_span(1, index)
        return choice

    def _attempt_span(self, number: int, index: int) -> Any:
        """The span of a monitored choice's attempt (its index named when there are several choices)."""
        if self.unmonitored is not None:
            return None
        strategy = self._config.rescue_strategy if number > 1 else None
        return start_attempt_span(number, strategy, index if self.call.choices > 1 else None)

    def _new_gate(self, strategy: str | None, prefix: list[int] | None = None) -> ChoiceGate:
        """The gate of a choice's next attempt; ``prefix``: the accepted tokens it continues after."""
        prefix = prefix or []
        monitor = self._new_monitor() if self.unmonitored is None else None
        if monitor is not None and prefix:
            monitor.prime(prefix)
        gated = self.policy.acts and monitor is not None and monitor.judges
        holds_whole = not self.call.stream or (self.policy is Policy.RESCUE and not self._continues)
        lag = None if holds_whole else self._config.holdback_tokens
        return ChoiceGate(monitor, gated, lag, Attempt(strategy, offset=len(prefix)), prefix)

    def _reports(self, for_metrics: bool = False) -> dict[int, StabilityReport]:
        """Each monitored choice's report (none when nothing was monitored, nor under ``observe`` unless for
        the metrics, which observe records)."""
        if self.unmonitored is not None or (self.policy is Policy.OBSERVE and not for_metrics):
            return {}
        return {
            index: report
            for index, choice in sorted(self._choices.items())
            if (report := self._choice_report(choice)) is not None
        }

    def _choice_report(self, choice: _Choice) -> StabilityReport | None:
        monitor = choice.gate.monitor
        if monitor is None:
            return None
        report = monitor.report()
        report.policy = self.policy.value
        report.prefill_risk = choice.prefill_risk
        report.covered = dict(choice.gate.covered)
        rescued = len(choice.attempts) > 1 and not choice.blocked
        action = "block" if choice.blocked else "rescue" if rescued else "annotate"
        if self.policy is not Policy.ANNOTATE and action == "annotate":
            action = "pass"
        outcome = None
        if choice.blocked:
            outcome = "rescue_failed" if self.policy is Policy.RESCUE else "blocked"
        elif rescued:
            outcome = "rescued"
        refused = self.policy.acts and not monitor.judges  # an uncalibrated model: nothing to act on
        report.gate = GateReport(
            action="none" if refused else action,
            reason=UNCALIBRATED if refused else None,
            outcome=outcome,
            detected=choice.detected.level.value if choice.detected else "ok",
            holdback_tokens=choice.gate.lag if choice.gate.gated else 0,
            tokens_withheld=choice.withheld,
            tokens_discarded=choice.discarded,
            tokens_leaked=choice.leaked,
            attempts=[attempt.report() for attempt in choice.attempts],
        )
        return report

    def report(self, reports: dict[int, StabilityReport] | None = None) -> StabilityReport | None:
        """The top-level ``stability``: the unmonitored marking, the only choice's report, or the worst one's."""
        if self.unmonitored is not None:
            return unmonitored_report(self.unmonitored, self.policy)
        reports = self._reports() if reports is None else reports
        if not reports:
            return None
        if len(reports) == 1 and self.call.choices == 1:
            return next(iter(reports.values()))
        indexed = sorted(reports.items())
        worst = worst_of([report for _, report in indexed])
        return worst.model_copy(update={"choice": indexed[worst.choice][0]})

    def _with_report(self, choice: dict, report: StabilityReport | None) -> dict:
        if report is None or self.call.choices == 1:
            return choice
        return {**choice, "stability": report.model_dump(mode="json")}

    def _note_first_output(self) -> None:
        if not self._first_output:
            self._first_output = True
            at = time.perf_counter()
            self._series.first_token(self._received_at, at)
            if self._scope is not None:
                self._scope.first_token_at = at

    def _gate_outcome(self) -> GateOutcome | None:
        top = self.report(self._reports(for_metrics=True))
        if top is None or top.gate is None or self.unmonitored is not None:
            return None
        choice = self._choices[top.choice if top.choice is not None else min(self._choices)]
        rescue = None
        if self.policy is Policy.RESCUE and top.gate.outcome is not None:
            rescue = "success" if top.gate.outcome == "rescued" else "fallback_block"
        return GateOutcome(
            policy=self.policy.value,
            action=top.gate.action,
            verdict=top.gate.detected if top.verdict != UNCALIBRATED else UNCALIBRATED,
            fired=bool(choice.detected and choice.detected.fired),
            rescue=rescue,
            rescue_attempts=tuple(
                "failed" if a.error or a.fired_at is not None else "success" for a in choice.attempts[1:]
            ),
            withheld_tokens=sum(c.withheld for c in self._choices.values()),
            discarded_tokens=sum(c.discarded for c in self._choices.values()),
            band_stats=choice.gate.monitor.band_stats() if choice.gate.monitor is not None else {},
            prefill_risk=choice.prefill_risk,
        )

    async def aclose(self) -> None:
        """Stop the upstream if the client went away, and record the request once."""
        if self._items is not None:
            await self._items.aclose()
        self._end(None if self._ended else asyncio.CancelledError())

    def _end(self, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        for choice in self._choices.values():
            choice.end_span()
        outcome = outcome_of(error)
        usage = self._usage or {}
        if outcome == "ok":
            prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            discarded = sum(c.discarded for c in self._choices.values())
            self._series.tokens(prompt, completion + discarded, completion)
            for index, choice in self._choices.items():
                if choice.gate.monitor is not None:
                    choice.gate.monitor.finish(self._finish_by_choice.get(index, "unknown"), choice.gate.token_ids)
        gate = self._gate_outcome() if outcome == "ok" or isinstance(error, ContentBlocked) else None
        if gate is not None:
            self._series.stability(gate)
        self._series.end(self._received_at, outcome)
        if self._scope is not None:
            self._describe(outcome, usage, gate)

    def _describe(self, outcome: str, usage: dict, gate: GateOutcome | None) -> None:
        """What the access line and the span say of this request: tokens, finishes, verdict, gate."""
        scope = self._scope
        scope.input_tokens = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else None
        if outcome == "ok":
            completion = usage.get("completion_tokens")
            scope.output_tokens = completion if isinstance(completion, int) else None
            scope.finish_reasons = self._finish_reasons
        if self.unmonitored is not None:
            scope.verdict = "unmonitored"
        elif gate is not None:
            top = self.report(self._reports(for_metrics=True))
            scope.verdict = gate.verdict
            scope.reasons = tuple(reason.signal for reason in top.reasons) if top is not None else ()
            scope.gate_action, scope.gate_outcome = gate.action, top.gate.outcome if top and top.gate else None


def _texts(tokens: list[ChoiceToken]) -> list[str]:
    return [token.token.text for token in tokens]


def _chunk(fragment: Fragment) -> dict:
    return {**fragment.envelope, "choices": [fragment.choice]}
