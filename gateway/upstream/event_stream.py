"""An upstream's server-sent event stream, checked as it arrives.

:func:`event_batches` turns a streaming :class:`UpstreamResponse` into batches of parsed ``data:``
events (one batch per network read, so that a relay can forward them with one write), ending at
``[DONE]``. Whatever is wrong with the stream raises a counted ``UpstreamError``: bytes that are not
events, an event that is not a JSON object, an error event, or an end without ``[DONE]``; and a counted
``UpstreamTimeout`` when the first event does not come by the answer's deadline, or a next one within
the response's ``event_timeout`` (comments, such as keepalives, do not count as events).
"""

from collections.abc import AsyncIterator

import orjson

from gateway.errors import UpstreamError
from gateway.upstream.http import Deadline
from gateway.upstream.pool import UpstreamResponse

__all__ = ["DONE", "EventSplitter", "check_event_stream", "completion_body", "event_batches", "malformed"]

DONE = b"[DONE]"
MAX_EVENT_BYTES = 1 << 20
_FIELDS = (b"event:", b"id:", b"retry:", b":")

Event = tuple[bytes, dict]
"""A ``data:`` event as received (without its blank line) and its JSON object."""


class EventSplitter:
    """Splits a byte stream into events and returns each one's ``data`` payload."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> tuple[list[tuple[bytes, bytes]], str | None]:
        """``(event bytes, data payload)`` of every event completed by ``data`` (comments dropped), and what
        is wrong with the stream if something is: then the events are those before the fault."""
        buffer = self._pending + data if self._pending else data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        events = []
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            block = buffer[start:end]
            start = end + 2
            payload = _payload(block)
            if payload is _MALFORMED:
                return events, f"a line that is not a server-sent event field: {block[:40]!r}"
            if payload is not None:
                events.append((block, payload))
        self._pending = buffer[start:]
        if len(self._pending) > MAX_EVENT_BYTES:
            return events, f"an event longer than {MAX_EVENT_BYTES} bytes"
        return events, None


_MALFORMED = b"<malformed>"


def _payload(block: bytes) -> bytes | None:
    """The event's data (``None`` for a comment), or ``_MALFORMED``."""
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]
    data = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line.startswith(b"data: ") else line[5:])
        elif line and not line.startswith(_FIELDS):
            return _MALFORMED
    return b"\n".join(data) if data else None


def malformed(response: UpstreamResponse, what: str) -> UpstreamError:
    """Count and build the error for an unusable stream."""
    error = UpstreamError(f"the upstream sent {what}", code="upstream_malformed")
    response.fail("malformed", error)
    return error


def completion_body(response: UpstreamResponse, data: bytes) -> dict:
    """A whole (non-streamed) answer's JSON object with its ``choices``; a counted 502 when it is not one."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise malformed(response, "a body that is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise malformed(response, "JSON that is not a completion")
    return body


def check_event_stream(response: UpstreamResponse) -> None:
    """Raise unless the response is a server-sent event stream."""
    if response.content_type != "text/event-stream":
        raise malformed(response, f"'{response.content_type or 'no content type'}' instead of an event stream")


async def event_batches(response: UpstreamResponse, until_done: bool = True) -> AsyncIterator[list[Event]]:
    """Batches of ``data:`` events up to ``[DONE]`` (not included); faults raise ``UpstreamError`` after the
    events that came before them. ``until_done=False``: the stream may also just end (the Responses API
    sends no ``[DONE]``)."""
    splitter = EventSplitter()
    deadline = response.deadline
    gap = response.event_timeout
    while data := await response.read_chunk(deadline):
        received, problem = splitter.feed(data)
        batch = []
        for block, payload in received:
            if payload == DONE:
                if batch:
                    yield batch
                return
            try:
                batch.append((block, _event(response, payload)))
            except UpstreamError:
                if batch:
                    yield batch
                raise
        if batch:
            yield batch
            deadline = Deadline.after(gap, f"the upstream sent no event for {gap:g} s")
        if problem is not None:
            raise malformed(response, f"a broken event stream ({problem})")
    if until_done:
        raise malformed(response, "an event stream that ended without [DONE]")


def _event(response: UpstreamResponse, payload: bytes) -> dict:
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise malformed(response, f"an event that is not JSON: {payload[:60]!r}") from None
    if not isinstance(event, dict):
        raise malformed(response, "an event that is not a JSON object")
    if "error" in event:
        error = event["error"] if isinstance(event["error"], dict) else {"message": str(event["error"])}
        failure = UpstreamError(f"the upstream failed mid-stream: {error.get('message', 'unknown error')}")
        raise response.fail("status", failure)
    return event
