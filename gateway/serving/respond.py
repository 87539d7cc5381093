"""Turn a started generation session into an HTTP response: JSON, or SSE ending in ``[DONE]``."""

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.drain import Drain
from gateway.errors import EngineFailure, OpenAIError, error_event
from gateway.generation import TokenLogprobs
from gateway.serving.session import GenerationSession, Piece
from gateway.serving.shapes import ChoiceResult, ResponseShape
from gateway.serving.sse_framing import DONE, sse_data

__all__ = ["ACTION_HEADER", "VERDICT_HEADER", "SessionStream", "streaming_response", "whole_response"]

log = logging.getLogger(__name__)

VERDICT_HEADER = "x-sinkwatch-verdict"
ACTION_HEADER = "x-sinkwatch-action"
CLIENT_CLOSED_REQUEST = 499


class Closable(Protocol):
    """A request's session: whatever must end with its response."""

    async def aclose(self) -> None: ...


class SessionStream(StreamingResponse):
    """Server-sent events that always close their session, even if the body never started."""

    def __init__(self, session: Closable, content: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"cache-control": "no-cache", **(headers or {})}
        )
        self._session = session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._session.aclose()


async def whole_response(session: GenerationSession, shape: ResponseShape, http: Request, drain: Drain) -> Response:
    """Collect the generation; a client that disconnects meanwhile cancels it (outcome ``cancelled``), and so
    does the end of a shutdown's timeout (a 503 ``shutting_down`` then, ``gateway.drain``).

    The collector is cancelled and awaited before the session closes: closing the generation while the
    collector is still inside it would fail (``aclose(): asynchronous generator is already running``).
    Nobody reads the answer to a client that left; it is a bare 499 (nginx's "client closed request").
    """
    collector = asyncio.ensure_future(_collect(session))
    watcher = asyncio.ensure_future(_wait_for_disconnect(http))
    try:
        with drain.hold(cancellable=False) as hold:
            waiting = asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
            done, _ = await hold.interruptible(waiting)
    finally:
        watcher.cancel()
        collector.cancel()
        await asyncio.wait({collector, watcher})
        await session.aclose()
    if collector not in done:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    report = session.report()
    body = shape.whole(collector.result(), session.usage, report)
    headers = {VERDICT_HEADER: report.verdict} if report is not None else {}
    if report is not None and report.gate is not None:
        headers[ACTION_HEADER] = report.gate.action
    return JSONResponse(body.model_dump(mode="json"), headers=headers)


async def _collect(session: GenerationSession) -> list[ChoiceResult]:
    """Every choice's text and log-probabilities, with its own report when there are several."""
    texts: list[list[str]] = [[] for _ in range(session.n)]
    logprobs: list[list[TokenLogprobs]] = [[] for _ in range(session.n)]
    async for update in session.updates():
        if isinstance(update, Piece):
            texts[update.choice].append(update.text)
            logprobs[update.choice].extend(update.logprobs)
    return [
        ChoiceResult(
            index=index,
            text="".join(texts[index]),
            finish_reason=session.finish_reason(index),
            logprobs=tuple(logprobs[index]),
            report=session.choice_report(index) if session.n > 1 else None,
        )
        for index in range(session.n)
    ]


async def _wait_for_disconnect(http: Request) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass


def streaming_response(
    session: GenerationSession, shape: ResponseShape, include_usage: bool, drain: Drain
) -> StreamingResponse:
    """SSE: opening chunks, text deltas, each choice's finish chunk, the usage chunk if asked, then ``[DONE]``.

    With several choices, chunks interleave as the choices generate and each finish chunk carries its
    choice's report; the top-level report rides on the last chunk before ``[DONE]``. A stream still running
    when the shutdown timeout runs out ends with an error event (``gateway.drain``).
    """

    async def events() -> AsyncIterator[bytes]:
        for chunk in shape.opening(session.n):
            yield sse_data(chunk)
        ended = 0
        try:
            with drain.hold(cancellable=False) as hold:
                updates = session.updates()
                while (update := await hold.interruptible(anext(updates, None))) is not None:
                    if isinstance(update, Piece):
                        yield sse_data(shape.delta(update))
                        continue
                    ended += 1
                    own = session.choice_report(update.choice) if session.n > 1 else None
                    last = session.report() if ended == session.n and not include_usage else None
                    yield sse_data(shape.closing(update.choice, session.finish_reason(update.choice), own, last))
        except OpenAIError as error:
            yield error_event(error, session.labels.endpoint)
            yield DONE
            return
        except Exception as exc:  # a stream already under way can only end with an error event
            log.exception("stream %s failed", session.request.request_id)
            yield error_event(EngineFailure(f"generation failed: {type(exc).__name__}"), session.labels.endpoint)
            yield DONE
            return
        if include_usage:
            yield sse_data(shape.usage(session.usage, session.report()))
        yield DONE

    return SessionStream(session, events())
