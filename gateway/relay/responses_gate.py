"""``/v1/responses`` under ``block`` and ``rescue`` (``vllm`` backend): the Responses events held back as a chat
stream's chunks are, a collapsing response cut at the detector's stable point.

vLLM's Responses events do not name their tokens. Each delta event (``response.output_text.delta``,
``response.reasoning_text.delta``, ``response.function_call_arguments.delta``, ...) is one engine step's
output: it carries the tokens of its ``logprobs`` when it has them, else one (the final event's
``usage.output_tokens`` counts the rest, e.g. the end-of-sequence token). An event is released once the
hold-back releases its last token (the chat gate, :class:`~gateway.relay.choice_gate.ChoiceGate`); events
without generated text keep their place. Tokens a parser swallows without an event (a tool-call or
reasoning parser's markup) place the later events that many tokens early: the hold-back must cover them
(docs/GATE.md).

When a collapse verdict fires the upstream is stopped, the events the detector vouched for go out, and
the stream ends with ``response.incomplete``: the last ``response`` object the upstream sent, with
``status: "incomplete"``, ``incomplete_details.reason: "content_filter"``, the output the client got
(its items as the released events built them) and the report. A whole answer is asked of the upstream
as a stream, gated the same way, and answered with the final event's ``response`` object (which vLLM
builds as it builds a whole answer).

Rescue falls back to block on this endpoint, and ``gate.note`` says so: a response is a stored,
addressable object (``store``, ``previous_response_id``, ``background``) whose id the client has from
``response.created``; a resample would be another response under another id.
"""

import copy
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
from fastapi.responses import Response, StreamingResponse

from gateway.errors import ContentBlocked, EngineFailure, OpenAIError, error_event
from gateway.gate.controller import Attempt
from gateway.gate.monitor import RequestMonitor
from gateway.gate.policy import GateConfig, Policy
from gateway.generation import TokenEvent
from gateway.protocol.stability import GateReport
from gateway.relay.choice_gate import ChoiceGate
from gateway.relay.plain import marked_event, record_report, sse_event
from gateway.relay.respond import verdict_headers
from gateway.relay.seam import ChoiceToken, FeatureSource, Fragment, RelayCall, TokenKind
from gateway.request_metrics import GateOutcome, RequestSeries, outcome_of
from gateway.telemetry.spans import end_attempt_span, start_attempt_span
from gateway.upstream.event_stream import check_event_stream, event_batches
from gateway.upstream.pool import UpstreamPool, UpstreamResponse

__all__ = ["RESCUE_NOTE", "ResponsesGate", "relay_gated_responses"]

RESCUE_NOTE = (
    "rescue is not available on /v1/responses (the client already holds the response's id; a resample "
    "would be another response): blocked instead"
)
_TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


def _kind(event_type: str) -> TokenKind:
    if "reasoning" in event_type:
        return "reasoning"
    return "tool_calls" if "arguments" in event_type else "content"


class _Output:
    """The response's output items as the client got them: opened by ``output_item.added``, grown by the
    released deltas, replaced by ``output_item.done``."""

    def __init__(self) -> None:
        self._items: dict[int, dict] = {}

    def apply(self, event: dict) -> None:
        kind, index, delta = event.get("type"), event.get("output_index"), event.get("delta")
        if not isinstance(index, int):
            return
        if kind in ("response.output_item.added", "response.output_item.done") and isinstance(event.get("item"), dict):
            self._items[index] = copy.deepcopy(event["item"])
        item = self._items.get(index)
        if item is None:
            return
        if kind == "response.content_part.added" and isinstance(event.get("part"), dict):
            item.setdefault("content", []).append(dict(event["part"]))
        elif kind == "response.function_call_arguments.delta" and isinstance(delta, str):
            item["arguments"] = (item.get("arguments") or "") + delta
        elif isinstance(kind, str) and kind.endswith("text.delta") and isinstance(delta, str):
            parts, at = item.get("content") or [], event.get("content_index", 0)
            if isinstance(at, int) and 0 <= at < len(parts):
                parts[at]["text"] = (parts[at].get("text") or "") + delta

    def items(self) -> list[dict]:
        """The items, those the cut left open marked ``incomplete``."""
        return [
            {**item, "status": "incomplete"} if item.get("status") == "in_progress" else item
            for _, item in sorted(self._items.items())
        ]


class ResponsesGate:
    """Holds one Responses stream's events behind its tokens' verdicts; blocks it at the stable point."""

    def __init__(self, features: FeatureSource, monitor: RequestMonitor, policy: Policy, config: GateConfig) -> None:
        self._features = features
        self._policy = policy
        self._raises = config.block_mode == "error"
        self._gate = ChoiceGate(monitor, True, config.holdback_tokens, Attempt(None))
        self._position = 0
        self._kind: TokenKind = "content"
        self._output = _Output()
        self._snapshot: dict = {}
        self._sequence = 0
        self._span = start_attempt_span(1, None)
        self.blocked = False

    async def feed(self, event: dict) -> list[dict]:
        """The events that may go out now that the upstream sent ``event`` (the block's, once it fired)."""
        kind = event.get("type") if isinstance(event.get("type"), str) else ""
        response = event.get("response")
        if isinstance(response, dict):
            self._snapshot = response
        if kind in _TERMINAL and isinstance(response, dict):
            usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
            total = usage.get("output_tokens")
            await self._take(total if isinstance(total, int) else self._position)
        elif kind.endswith(".delta"):
            self._kind = _kind(kind)
            logprobs = event.get("logprobs")
            await self._take(self._position + (len(logprobs) if isinstance(logprobs, list) and logprobs else 1))
        if self._gate.fired is not None:
            return self._block()
        self._gate.add_fragment(Fragment(0, event, {}))
        released = self._gate.finish() if kind in _TERMINAL else self._gate.releasable()
        return self._sent(released)

    async def _take(self, end: int) -> None:
        """Show the monitor the tokens before ``end`` not yet seen (their features, waited for)."""
        while self._position < end and self._gate.fired is None:
            features = await self._features.take(self._position, None)
            token_id = features.token_id if features is not None else -1
            self._gate.add_token(ChoiceToken(0, TokenEvent("", token_id, features), self._kind))
            self._position += 1

    def _sent(self, fragments: list[Fragment]) -> list[dict]:
        for fragment in fragments:
            self._output.apply(fragment.envelope)
            number = fragment.envelope.get("sequence_number")
            self._sequence = number if isinstance(number, int) else self._sequence
        return [fragment.envelope for fragment in fragments]

    def _block(self) -> list[dict]:
        """What the detector vouched for, then ``response.incomplete`` with the output the client got."""
        released = self._sent(self._gate.cut())
        self.blocked = True
        if self._raises:
            raise ContentBlocked(f"the generation collapsed (sinkwatch verdict: {self._detected()}) and was blocked")
        response = {
            **self._snapshot,
            "status": "incomplete",
            "incomplete_details": {"reason": "content_filter"},
            "output": self._output.items(),
        }
        return [*released, {"type": "response.incomplete", "sequence_number": self._sequence + 1, "response": response}]

    @property
    def _monitor(self) -> RequestMonitor:
        return self._gate.monitor

    def _detected(self) -> str:
        verdict = self._gate.fired or (self._monitor.verdict if self._monitor.tokens else None)
        return verdict.level.value if verdict is not None else "ok"

    def report(self) -> dict:
        """The ``stability`` object of the response."""
        report = self._monitor.report()
        report.policy = self._policy.value
        report.covered = dict(self._gate.covered)
        outcome = ("rescue_failed" if self._policy is Policy.RESCUE else "blocked") if self.blocked else None
        report.gate = GateReport(
            action="block" if self.blocked else "pass",
            outcome=outcome,
            detected=self._detected(),
            holdback_tokens=self._gate.lag,
            tokens_withheld=self._gate.withheld if self.blocked else 0,
            tokens_leaked=self._gate.leaked,
            attempts=[self._gate.attempt.report()],
            note=RESCUE_NOTE if self.blocked and self._policy is Policy.RESCUE else None,
        )
        return report.model_dump(mode="json")

    def outcome(self) -> GateOutcome:
        """What the monitor and the gate concluded, for the metrics."""
        return GateOutcome(
            policy=self._policy.value,
            action="block" if self.blocked else "pass",
            verdict=self._detected(),
            fired=self._gate.fired is not None or (self._monitor.tokens > 0 and self._monitor.verdict.fired),
            rescue="fallback_block" if self.blocked and self._policy is Policy.RESCUE else None,
            rescue_attempts=(),
            withheld_tokens=self._gate.withheld if self.blocked else 0,
            discarded_tokens=0,
            band_stats=self._monitor.band_stats(),
        )

    def close(self) -> None:
        """Stop collecting features; end the attempt's span."""
        self._features.close()
        if self._span is not None:
            end_attempt_span(self._span, self._gate.attempt.report().model_dump())
            self._span = None


async def relay_gated_responses(
    pool: UpstreamPool, call: RelayCall, gate: ResponsesGate, series: RequestSeries, received_at: float
) -> Response:
    """Relay a Responses call through ``gate``: as a held-back stream, or whole when the client asked so."""
    series.begin()
    upstream = replace(call, body={**call.body, "stream": True})
    try:
        response = await pool.open(call.path, orjson.dumps(upstream.body), model=call.model, request_id=call.request_id)
        if not response.ok:
            raise await response.error()
        check_event_stream(response)
    except BaseException as error:
        gate.close()
        series.end(received_at, outcome_of(error))
        raise
    events = _gated(response, gate, series, received_at)
    if call.stream:
        return StreamingResponse(_framed(events), media_type="text/event-stream", headers={"cache-control": "no-cache"})
    final: dict | None = None
    async for _, event in events:
        final = event
    answer = final.get("response") if final is not None else None
    if not isinstance(answer, dict):
        raise EngineFailure("the upstream's Responses stream ended without its final event")
    return Response(orjson.dumps(answer), media_type="application/json", headers=verdict_headers(answer["stability"]))


async def _framed(events: AsyncIterator[tuple[bytes, dict]]) -> AsyncIterator[bytes]:
    """The events as SSE, framed as the upstream framed them; a fault ends the stream with an error event."""
    try:
        async for raw, event in events:
            yield sse_event(raw, event)
    except OpenAIError as error:
        yield error_event(error, "responses")


async def _gated(
    response: UpstreamResponse, gate: ResponsesGate, series: RequestSeries, received_at: float
) -> AsyncIterator[tuple[bytes, dict]]:
    """The upstream's events as the gate releases them (with the upstream's framing), the last one with the
    report; the verdict and the outcome are recorded at the end."""
    error: BaseException | None = None
    framing = b""
    try:
        async for batch in event_batches(response, until_done=False):
            for raw, event in batch:
                framing = framing or raw
                released = await gate.feed(event)
                for out in released:
                    if out.get("type") in _TERMINAL:
                        report = gate.report()
                        record_report(series, gate, report)
                        yield framing, marked_event(out, report)
                        return
                    yield framing, out
        raise EngineFailure("the upstream's Responses stream ended without its final event")
    except BaseException as exc:
        error = exc
        if isinstance(exc, ContentBlocked):
            record_report(series, gate, None)
        raise
    finally:
        gate.close()
        await response.aclose()
        series.end(received_at, outcome_of(error))
