"""Answers without choices, relayed as sent with a report on the answer or on a stream's last event.

``/v1/embeddings`` (and ``/v1/responses`` where there is no monitored path) are marked
``stability.verdict: "unmonitored"`` (in the body, on a stream's last event, in the
``x-sinkwatch-verdict`` header) and counted by reason, never refused. ``/v1/responses`` on the ``vllm``
backend gets its report from a :class:`Reporter` that reads the features of the answer's tokens once the
final event says how many there were.
"""

from collections.abc import AsyncIterator
from typing import Protocol

import orjson
from fastapi.responses import Response, StreamingResponse

from gateway.errors import OpenAIError, error_event
from gateway.relay.respond import verdict_headers
from gateway.relay.seam import RelayCall
from gateway.request_metrics import GateOutcome, RequestSeries, outcome_of
from gateway.serving.sse_framing import DONE
from gateway.telemetry.request_scope import current_scope
from gateway.upstream.event_stream import check_event_stream, event_batches, malformed
from gateway.upstream.pool import UpstreamPool, UpstreamResponse

__all__ = ["Marking", "Reporter", "marked_event", "record_report", "relay_marked", "sse_event"]


class Reporter(Protocol):
    """Makes the report of an answer from the answer (or a stream's final event) itself."""

    async def report(self, final: dict) -> dict | None:
        """The ``stability`` object for this answer (None under ``observe``: metrics only)."""

    def outcome(self) -> GateOutcome | None:
        """What the monitors concluded, for the metrics (after :meth:`report`); None when nothing was."""

    def close(self) -> None:
        """Stop collecting (the answer ended, or the client went away)."""


class Marking:
    """The reporter of an unmonitored answer: the same marking whatever the answer."""

    def __init__(self, report: dict) -> None:
        self.marking = report

    async def report(self, final: dict) -> dict:
        return self.marking

    def outcome(self) -> GateOutcome | None:
        return None

    def close(self) -> None:
        pass


def marked_event(event: dict, report: dict | None) -> dict:
    """An answer or final event with ``report`` as its ``stability``: inside a Responses event's ``response``
    object (where the client reads the response), else at the top level."""
    if report is None:
        return event
    if isinstance(event.get("response"), dict):
        return {**event, "response": {**event["response"], "stability": report}}
    return {**event, "stability": report}


def sse_event(raw: bytes, event: dict) -> bytes:
    """``event`` framed like the upstream's ``raw`` event: with its ``event:`` line when it had one."""
    data = b"data: " + orjson.dumps(event) + b"\n\n"
    if raw.startswith(b"event:") and isinstance(event.get("type"), str):
        return b"event: " + event["type"].encode() + b"\n" + data
    return data


async def relay_marked(
    pool: UpstreamPool, call: RelayCall, reporter: Reporter, series: RequestSeries, received_at: float, endpoint: str
) -> Response:
    """Relay ``call`` and add ``reporter``'s report to its answer (an unmonitored one is counted here)."""
    series.begin()
    if isinstance(reporter, Marking):
        RequestSeries.unmonitored(reporter.marking["reason"])
    try:
        response = await pool.open(call.path, orjson.dumps(call.body), model=call.model, request_id=call.request_id)
        if not response.ok:
            raise await response.error()
        if not call.stream:
            async with response:
                body = await response.read_all(pool.config.max_response_bytes)
                answer = _json_object(response, body)
            report = await reporter.report(answer)
            reporter.close()
            record_report(series, reporter, report)
            series.end(received_at, "ok")
            marked = orjson.dumps(marked_event(answer, report))
            return Response(marked, media_type="application/json", headers=verdict_headers(report))
        check_event_stream(response)
    except BaseException as error:
        reporter.close()
        series.end(received_at, outcome_of(error))
        raise
    upfront = verdict_headers(reporter.marking) if isinstance(reporter, Marking) else {}
    events = _marked_stream(response, reporter, series, received_at, endpoint)
    return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache", **upfront})


def record_report(series: RequestSeries, reporter: Reporter, report: dict | None) -> None:
    """The verdict in the metrics, and on the access line and the span."""
    outcome = reporter.outcome()
    if outcome is not None:
        series.stability(outcome)
    scope = current_scope()
    if scope is not None and report is not None:
        scope.verdict = report["verdict"]
        scope.gate_action = report["gate"]["action"] if isinstance(report.get("gate"), dict) else None


def _json_object(response: UpstreamResponse, body: bytes) -> dict:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed(response, "a body that is not JSON") from None
    if not isinstance(answer, dict):
        raise malformed(response, "JSON that is not an object")
    return answer


async def _marked_stream(
    response: UpstreamResponse, reporter: Reporter, series: RequestSeries, received_at: float, endpoint: str
) -> AsyncIterator[bytes]:
    """The upstream's events as sent, the last one marked; ``[DONE]`` after it when the upstream sent one."""
    outcome, held = "server_error", None
    until_done = endpoint != "responses"
    try:
        async for batch in event_batches(response, until_done=until_done):
            for raw, event in batch:
                if held is not None:
                    yield held[0] + b"\n\n"
                held = (raw, event)
        if held is not None:
            report = await reporter.report(held[1])
            yield sse_event(held[0], marked_event(held[1], report))
            record_report(series, reporter, report)
        if until_done:
            yield DONE
        outcome = "ok"
    except OpenAIError as error:
        outcome = outcome_of(error)
        yield error_event(error, endpoint)
    finally:
        reporter.close()
        await response.aclose()
        series.end(received_at, outcome)
