"""The ``vllm`` backend's relay: the client's body to vLLM as sent, the answer back as vLLM sent it, with tokens.

What monitoring adds to the body: ``return_token_ids`` (each chunk names the tokens it carries; removed
again from the answer unless the client asked for them) and ``vllm_xargs`` with the gateway's request id,
the statistics receiver's address and the number of choices (the plugin publishes each choice's features
under its own id). Each choice's tokens are matched to their features by position, as for a generation.
A chunk's tokens are of the kind of its delta: content, reasoning or tool-call arguments. A whole answer
under block or rescue is asked with log-probabilities (removed again unless the client asked for them):
they give each token's text, by which a blocked choice is cut at its stable point.
"""

from collections.abc import AsyncIterator
from dataclasses import replace

import orjson

from gateway.backends.vllm_stats import FeatureStream, StatsReceiver
from gateway.generation import TokenEvent
from gateway.relay.seam import (
    ChoiceToken,
    FeatureTap,
    Fragment,
    RelayCall,
    RelayItem,
    RelayStart,
    TokenKind,
    Trailer,
    WholeAnswer,
    delta_kind,
    message_kinds,
)
from gateway.upstream.event_stream import check_event_stream, completion_body, event_batches
from gateway.upstream.pool import UpstreamPool
from monitors.vllm_plugin.wire import RequestTag, choice_request_id

__all__ = ["feature_tap", "relay_to_vllm"]


def _token_ids(choice: dict, keep: bool) -> list[int]:
    ids = choice.get("token_ids") if keep else choice.pop("token_ids", None)
    return ids if isinstance(ids, list) and all(isinstance(t, int) for t in ids) else []


def _kind(choice: dict) -> TokenKind:
    delta = choice.get("delta")
    return delta_kind(delta) if isinstance(delta, dict) else "content"


class _Choices:
    """Each choice's feature stream and the position of its next token.

    ``defer``: nothing acts on the verdict before the end (annotate, observe), so a token does not wait for
    its features: it is noted, and :meth:`deferred` takes them all once the stream has ended.
    """

    def __init__(self, streams: dict[int, FeatureStream], defer: bool) -> None:
        self._streams = streams
        self._next: dict[int, int] = {}
        self._defer = defer and bool(streams)
        self._pending: list[tuple[int, int, str]] = []

    async def tokens(self, index: int, ids: list[int], kind: str) -> list[ChoiceToken]:
        if self._defer:
            self._pending += [(index, token_id, kind) for token_id in ids]
            return []
        return [await self._token(index, token_id, kind) for token_id in ids]

    async def deferred(self) -> list[ChoiceToken]:
        """The tokens whose features were not waited for, with their features."""
        pending, self._pending = self._pending, []
        return [await self._token(index, token_id, kind) for index, token_id, kind in pending]

    async def _token(self, index: int, token_id: int, kind: str) -> ChoiceToken:
        stream = self._streams.get(index)
        position = self._next.get(index, 0)
        self._next[index] = position + 1
        features = await stream.take(position, token_id) if stream is not None else None
        return ChoiceToken(index, TokenEvent("", token_id, features), kind)

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()


def _tagged(body: dict, receiver: StatsReceiver, call: RelayCall) -> dict[int, FeatureStream]:
    """Tag ``body`` for the plugin (in place) and open the feature stream of each choice."""
    n = call.choices
    ids = [call.request_id] if n == 1 else [choice_request_id(call.request_id, i) for i in range(n)]
    streams = {i: receiver.open(request_id) for i, request_id in enumerate(ids)}
    xargs = body.get("vllm_xargs") if isinstance(body.get("vllm_xargs"), dict) else {}
    body["vllm_xargs"] = {**xargs, **RequestTag(call.request_id, receiver.address, n).to_xargs()}
    return streams


def feature_tap(receiver: StatsReceiver | None, call: RelayCall) -> FeatureTap:
    """``call`` tagged for the plugin, with the stream its features arrive on (answers without choices)."""
    if receiver is None:
        return FeatureTap(call, None, "uncalibrated")
    body = dict(call.body)
    streams = _tagged(body, receiver, replace(call, body={}))
    return FeatureTap(replace(call, body=body), streams[0], None)


async def relay_to_vllm(
    pool: UpstreamPool, receiver: StatsReceiver | None, call: RelayCall
) -> AsyncIterator[RelayItem]:
    """Relay ``call`` to vLLM, yielding the seam's items (``gateway.relay.seam``)."""
    body = dict(call.body)
    client_ids = body.get("return_token_ids") is True
    body["return_token_ids"] = True
    client_logprobs = _asks_logprobs(body)
    texts = call.gated and not call.stream and call.monitor
    if texts and not client_logprobs:
        body["logprobs"] = True if "messages" in body else 0
    streams: dict[int, FeatureStream] = {}
    unmonitored = "uncalibrated" if receiver is None else None
    if receiver is not None and call.monitor:
        streams = _tagged(body, receiver, call)
    choices = _Choices(streams, defer=call.stream and not call.gated)
    try:
        response = await pool.open(call.path, orjson.dumps(body), model=call.model, request_id=call.request_id)
        async with response:
            if not response.ok:
                raise await response.error()
            yield RelayStart(unmonitored)
            if not call.stream:
                answer = await _whole(response, choices, client_ids, pool.config.max_response_bytes)
                yield _with_texts(answer, client_logprobs) if texts else answer
                return
            check_event_stream(response)
            async for batch in event_batches(response):
                for _, event in batch:
                    for item in await _stream_items(event, choices, client_ids):
                        yield item
            for item in await choices.deferred():
                yield item
    finally:
        choices.close()


def _asks_logprobs(body: dict) -> bool:
    """Whether a body asks for log-probabilities (chat: ``logprobs: true``; completions: a number)."""
    logprobs = body.get("logprobs")
    return logprobs is True if "messages" in body else isinstance(logprobs, int) and not isinstance(logprobs, bool)


def _token_texts(logprobs: object) -> list[str]:
    """Each generated token's text, from a choice's log-probabilities (chat or completions form)."""
    if not isinstance(logprobs, dict):
        return []
    if isinstance(logprobs.get("content"), list):
        return [entry.get("token", "") if isinstance(entry, dict) else "" for entry in logprobs["content"]]
    tokens = logprobs.get("tokens")
    return [token if isinstance(token, str) else "" for token in tokens] if isinstance(tokens, list) else []


def _with_texts(answer: WholeAnswer, client_logprobs: bool) -> WholeAnswer:
    """A gated whole answer's tokens with their texts (a blocked answer is cut by them), from the
    log-probabilities asked for that purpose (removed again unless the client asked for them)."""
    tokens: dict[int, list[ChoiceToken]] = {}
    for position, choice in enumerate(answer.body["choices"]):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        texts = _token_texts(choice.get("logprobs"))
        listed = answer.tokens.get(index, [])
        if len(texts) == len(listed):
            listed = [replace(t, token=replace(t.token, text=text)) for t, text in zip(listed, texts, strict=True)]
        tokens[index] = listed
        if not client_logprobs:
            choice["logprobs"] = None
    return WholeAnswer(answer.body, tokens)


async def _stream_items(event: dict, choices: _Choices, client_ids: bool) -> list[RelayItem]:
    listed = event.get("choices")
    if not isinstance(listed, list) or not listed:
        return [Trailer(event)]
    envelope = {key: value for key, value in event.items() if key != "choices"}
    if not client_ids:
        envelope.pop("prompt_token_ids", None)
    items: list[RelayItem] = []
    for choice in listed:
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", 0)
        items += await choices.tokens(index, _token_ids(choice, client_ids), _kind(choice))
        if client_ids or not _only_token_ids(choice):
            items.append(Fragment(index, envelope, choice))
    return items


def _only_token_ids(choice: dict) -> bool:
    """A chunk vLLM sent only because token ids were asked for (a token its tool or reasoning parser held
    back): the client, which did not ask for them, would not have got it."""
    delta = choice.get("delta")
    empty_delta = isinstance(delta, dict) and not any(delta.values())
    return empty_delta and choice.get("finish_reason") is None and not choice.get("logprobs")


async def _whole(response, choices: _Choices, client_ids: bool, limit: int) -> WholeAnswer:
    data = await response.read_all(limit)
    body = completion_body(response, data)
    if not client_ids:
        body.pop("prompt_token_ids", None)
    tokens: dict[int, list[ChoiceToken]] = {}
    for position, choice in enumerate(body["choices"]):
        if not isinstance(choice, dict):
            continue
        if not client_ids:
            choice.pop("prompt_token_ids", None)
        index = choice.get("index", position)
        message = choice.get("message")
        kind = "+".join(message_kinds(message)) if isinstance(message, dict) else "content"
        tokens[index] = await choices.tokens(index, _token_ids(choice, client_ids), kind or "content")
    return WholeAnswer(body, tokens)
