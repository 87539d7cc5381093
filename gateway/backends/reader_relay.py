"""The ``openai`` backend's relay with a reader: the client's body upstream as sent, the answer back as sent,
every generated text read by the local model.

Each choice gets its own :class:`~gateway.backends.reader.ReadingSession`. The reader reads all the text a
choice generates, in order: reasoning, content and tool-call arguments alike; each token it commits is
of the kind of the delta its text came from. A fragment of the upstream's answer is yielded once the
tokens covering its text are, so the gate holds it until the detector has vouched for them. When the
reader cannot take every choice (``--reader-max-streams``) the request is relayed unmonitored.
"""

import bisect
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from gateway.generation import ChatPrompt, GenerationRequest, SamplingParams, TextPrompt
from gateway.relay.seam import ChoiceToken, Fragment, RelayCall, RelayItem, RelayStart, Trailer, WholeAnswer
from gateway.upstream.event_stream import check_event_stream, completion_body, event_batches
from gateway.upstream.pool import UpstreamPool

if TYPE_CHECKING:  # the reader brings torch and a model
    from gateway.backends.reader import Reader, ReadingSession

__all__ = ["generated_texts", "reading_request", "relay_through_reader"]

# Chat templates know system, user and assistant; the reader renders tool results as user turns.
_TEMPLATE_ROLE = {"developer": "system", "tool": "user"}


def generated_texts(delta: dict) -> list[tuple[str, str]]:
    """The generated texts of a delta or message, by kind, in the order a model generates them."""
    texts = []
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(reasoning, str):
        texts.append(("reasoning", reasoning))
    for name in ("content", "text"):
        if isinstance(delta.get(name), str) and delta[name]:
            texts.append(("content", delta[name]))
    for tool_call in delta.get("tool_calls") or []:
        function = tool_call.get("function") if isinstance(tool_call, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if isinstance(arguments, str) and arguments:
            texts.append(("tool_calls", arguments))
    return texts


def _choice_texts(choice: dict) -> list[tuple[str, str]]:
    part = choice.get("delta", choice.get("message"))
    return generated_texts(part if isinstance(part, dict) else choice)


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def reading_request(call: RelayCall) -> GenerationRequest | None:
    """The prompt the reader reads the answer after, or None for a token-id prompt (only the upstream reads it)."""
    body = call.body
    messages = body.get("messages")
    if isinstance(messages, list):
        rendered = tuple(
            {"role": _TEMPLATE_ROLE.get(m.get("role"), m.get("role")), "content": _text_of(m.get("content"))}
            for m in messages
            if isinstance(m, dict)
        )
        prompt: ChatPrompt | TextPrompt = ChatPrompt(rendered)
    elif isinstance(body.get("prompt"), str):
        prompt = TextPrompt(text=body["prompt"])
    else:
        return None
    return GenerationRequest(call.request_id, call.model, prompt, SamplingParams(max_tokens=None))


@dataclass
class _Reading:
    """One choice being read: the text fed so far (with the kind of each stretch), the fragments waiting."""

    index: int
    session: "ReadingSession"
    fed: int = 0
    committed: int = 0
    starts: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    waiting: list[tuple[int, Fragment]] = field(default_factory=list)
    unread: str = ""

    def feed(self, texts: list[tuple[str, str]]) -> None:
        for kind, text in texts:
            self.starts.append(self.fed)
            self.kinds.append(kind)
            self.fed += len(text)
            self.unread += text

    async def read(self, final: bool) -> list[RelayItem]:
        """Tokens of the text read so far, then the fragments they cover."""
        text, self.unread = self.unread, ""
        events = await self.session.read(text) if text else []
        if final:
            events += await self.session.finish()
        items: list[RelayItem] = []
        for event in events:
            kind = self.kinds[bisect.bisect_right(self.starts, self.committed) - 1]
            self.committed += len(event.text)
            items.append(ChoiceToken(self.index, event, kind))
        while self.waiting and (final or self.waiting[0][0] <= self.committed):
            items.append(self.waiting.pop(0)[1])
        return items


async def relay_through_reader(
    pool: UpstreamPool, reader: "Reader | None", call: RelayCall
) -> AsyncIterator[RelayItem]:
    """Relay ``call``, reading each choice with ``reader`` when it can take them all."""
    readings: dict[int, _Reading] = {}
    response = await pool.open(call.path, orjson.dumps(call.body), model=call.model, request_id=call.request_id)
    try:
        if not response.ok:
            raise await response.error()
        unmonitored = await _open_readings(reader, call, readings)
        yield RelayStart(unmonitored)
        if not call.stream:
            yield await _whole(response, readings, pool.config.max_response_bytes)
            return
        check_event_stream(response)
        async for batch in event_batches(response):
            touched: dict[int, bool] = {}
            for _, event in batch:
                for item in _split(event):
                    reading = readings.get(item.index) if isinstance(item, Fragment) else None
                    if reading is None:
                        yield item
                        continue
                    reading.feed(_choice_texts(item.choice))
                    reading.waiting.append((reading.fed, item))
                    touched[item.index] = touched.get(item.index, False) or item.choice.get("finish_reason") is not None
            for index, finished in touched.items():
                for item in await readings[index].read(final=finished):
                    yield item
    finally:
        for reading in readings.values():
            reading.session.close()
        await response.aclose()


async def _open_readings(reader: "Reader | None", call: RelayCall, readings: dict[int, _Reading]) -> str | None:
    """A reading session per choice; why the request goes unmonitored when there cannot be one for each."""
    if reader is None or not reader.ready:
        return "uncalibrated"
    if not call.monitor:
        return "endpoint"
    request = reading_request(call)
    if request is None:
        return "endpoint"
    if reader.active + call.choices > reader.max_streams:
        return "capacity"
    for index in range(call.choices):
        session = await reader.open(request)
        if session is None:  # others took the slots meanwhile: this request is read not at all
            for reading in readings.values():
                reading.session.close()
            readings.clear()
            return "capacity"
        readings[index] = _Reading(index, session)
    return None


def _split(event: dict) -> list[Fragment | Trailer]:
    listed = event.get("choices")
    if not isinstance(listed, list) or not listed:
        return [Trailer(event)]
    envelope = {key: value for key, value in event.items() if key != "choices"}
    return [Fragment(c.get("index", 0), envelope, c) for c in listed if isinstance(c, dict)]


async def _whole(response, readings: dict[int, _Reading], limit: int) -> WholeAnswer:
    data = await response.read_all(limit)
    body = completion_body(response, data)
    tokens: dict[int, list[ChoiceToken]] = {}
    for position, choice in enumerate(body["choices"]):
        index = choice.get("index", position) if isinstance(choice, dict) else position
        reading = readings.get(index)
        if reading is None or not isinstance(choice, dict):
            continue
        reading.feed(_choice_texts(choice))
        tokens[index] = [item for item in await reading.read(final=True) if isinstance(item, ChoiceToken)]
    return WholeAnswer(body, tokens)
