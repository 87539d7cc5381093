"""A relay session as an HTTP response: the upstream's JSON with the reports added, or its events as SSE."""

import asyncio
import logging
from collections.abc import AsyncIterator

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from gateway.errors import EngineFailure, OpenAIError, error_event
from gateway.relay.session import RelaySession
from gateway.serving.respond import ACTION_HEADER, VERDICT_HEADER, SessionStream
from gateway.serving.sse_framing import DONE

__all__ = ["relay_stream", "relay_whole", "verdict_headers"]

log = logging.getLogger(__name__)


def verdict_headers(report: dict | None) -> dict[str, str]:
    """The verdict (and the gate's action) as headers, for clients that do not read the body."""
    if report is None:
        return {}
    headers = {VERDICT_HEADER: str(report["verdict"])}
    if isinstance(report.get("gate"), dict):
        headers[ACTION_HEADER] = str(report["gate"]["action"])
    return headers


def relay_stream(session: RelaySession, endpoint: str) -> StreamingResponse:
    """The upstream's chunks as released by the gate, then ``[DONE]``; a fault ends with an error event."""

    async def events() -> AsyncIterator[bytes]:
        try:
            async for event in session.events():
                yield b"data: " + orjson.dumps(event) + b"\n\n"
        except OpenAIError as error:
            yield error_event(error, endpoint)
        except Exception as exc:  # a stream already under way can only end with an error event
            log.exception("relayed stream %s failed", session.call.request_id)
            yield error_event(EngineFailure(f"relay failed: {type(exc).__name__}"), endpoint)
        yield DONE

    marking = session.report() if session.unmonitored is not None else None
    return SessionStream(session, events(), verdict_headers(marking.model_dump() if marking else None))


async def relay_whole(session: RelaySession, http: Request) -> Response:
    """The whole answer; a client that disconnects meanwhile cancels it."""
    answer = asyncio.ensure_future(session.whole())
    watcher = asyncio.ensure_future(_wait_for_disconnect(http))
    try:
        done, _ = await asyncio.wait({answer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not answer.done():
            answer.cancel()
        await session.aclose()
    if answer not in done:
        raise asyncio.CancelledError("client disconnected")
    body = answer.result()
    return Response(orjson.dumps(body), media_type="application/json", headers=verdict_headers(body.get("stability")))


async def _wait_for_disconnect(http: Request) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass
