"""Endpoints without a monitored path (``/v1/embeddings``; ``/v1/responses`` on the ``openai`` backend): the
request and the answer relayed as sent, marked ``stability.verdict: "unmonitored"`` (in the body, on a
stream's last event, in the ``x-sinkwatch-verdict`` header) and counted by reason, never refused."""

from collections.abc import AsyncIterator

import orjson
from fastapi.responses import Response, StreamingResponse

from gateway.errors import OpenAIError, error_event
from gateway.relay.respond import DONE, verdict_headers
from gateway.relay.seam import RelayCall
from gateway.request_metrics import RequestSeries, outcome_of
from gateway.upstream.event_stream import check_event_stream, event_batches, malformed
from gateway.upstream.pool import UpstreamPool, UpstreamResponse

__all__ = ["MAX_ANSWER_BYTES", "marked_event", "relay_unmonitored"]

MAX_ANSWER_BYTES = 64 << 20


def marked_event(event: dict, report: dict) -> dict:
    """An answer or final event with ``report`` as its ``stability``: inside a Responses event's ``response``
    object (where the client reads the response), else at the top level."""
    if isinstance(event.get("response"), dict):
        return {**event, "response": {**event["response"], "stability": report}}
    return {**event, "stability": report}


def sse_event(raw: bytes, event: dict) -> bytes:
    """``event`` framed like the upstream's ``raw`` event: with its ``event:`` line when it had one."""
    data = b"data: " + orjson.dumps(event) + b"\n\n"
    if raw.startswith(b"event:") and isinstance(event.get("type"), str):
        return b"event: " + event["type"].encode() + b"\n" + data
    return data


async def relay_unmonitored(
    pool: UpstreamPool, call: RelayCall, report: dict, series: RequestSeries, received_at: float, endpoint: str
) -> Response:
    """Relay ``call`` and mark its answer with ``report`` (the unmonitored marking)."""
    series.begin()
    RequestSeries.unmonitored(report["reason"])
    try:
        response = await pool.open(call.path, orjson.dumps(call.body), model=call.model, request_id=call.request_id)
        if not response.ok:
            raise await response.error()
        if not call.stream:
            async with response:
                body = await response.read_all(MAX_ANSWER_BYTES)
                answer = _json_object(response, body)
            series.end(received_at, "ok")
            return Response(
                orjson.dumps(marked_event(answer, report)),
                media_type="application/json",
                headers=verdict_headers(report),
            )
        check_event_stream(response)
    except BaseException as error:
        series.end(received_at, outcome_of(error))
        raise
    headers = {"cache-control": "no-cache", **verdict_headers(report)}
    events = _marked_stream(response, report, series, received_at, endpoint)
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _json_object(response: UpstreamResponse, body: bytes) -> dict:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed(response, "a body that is not JSON") from None
    if not isinstance(answer, dict):
        raise malformed(response, "JSON that is not an object")
    return answer


async def _marked_stream(
    response: UpstreamResponse, report: dict, series: RequestSeries, received_at: float, endpoint: str
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
            yield sse_event(held[0], marked_event(held[1], report))
        if until_done:
            yield DONE
        outcome = "ok"
    except OpenAIError as error:
        outcome = outcome_of(error)
        yield error_event(error, endpoint)
    finally:
        await response.aclose()
        series.end(received_at, outcome)
