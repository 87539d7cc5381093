"""The ``openai`` backend: any OpenAI-compatible upstream, through the upstream pool.

Without a reader, requests take the proxy fast path (``gateway.proxy.proxied_request``): the upstream's
bytes are relayed unchanged and there is nothing to monitor. With ``--reader``, client requests are
relayed as sent and every choice's text is read by the local model (``gateway.backends.reader_relay``,
``gateway.backends.reader``), so the gate and the stability report work as with the embedded engine;
:meth:`OpenAIBackend.generate` serves the lab's harnesses.

Rescue continues an accepted prefix by a continuation request: a text prompt becomes a
``/v1/completions`` request for prompt + prefix (any OpenAI-compatible server); a chat request ends
with the prefix as a partial assistant message and ``continue_final_message: true,
add_generation_prompt: false`` (vLLM and SGLang extensions: the chat template renders the prefix as
the start of the answer, and the upstream generates only what follows). Upstreams without that
extension should run with ``--upstream-continuation none``, which refuses rescue attempts (the gate
then falls back to block).
"""

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, get_args

import orjson

from gateway.backends.reader_relay import relay_through_reader
from gateway.config import Settings
from gateway.errors import UnsupportedParameter
from gateway.generation import (
    ChatPrompt,
    FinishEvent,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    StartEvent,
    TokenEvent,
)
from gateway.relay.seam import FeatureTap, RelayCall, RelayItem
from gateway.upstream.event_stream import check_event_stream, event_batches
from gateway.upstream.pool import UpstreamPool
from monitors.bands import LayerBand
from monitors.calibration import Calibration

__all__ = ["OpenAIBackend", "chunk_choice", "finish_event", "openai_backend", "upstream_request"]

if TYPE_CHECKING:  # the reader brings torch and a model: imported only when there is one
    from gateway.backends.reader import Reader, ReadingSession

_FINISH_REASONS = frozenset(get_args(FinishReason))


def upstream_request(request: GenerationRequest, continuation: str) -> tuple[str, dict]:
    """The upstream path and streaming JSON body for a generation request."""
    sampling = request.sampling
    if sampling.logprobs is not None:  # the monitored path rebuilds answers from their text alone
        raise UnsupportedParameter("logprobs are not served on this backend's monitored path", param="logprobs")
    body: dict = {"model": request.model, "stream": True, "stream_options": {"include_usage": True}}
    optional = {
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed,
        "stop": list(sampling.stop) or None,
        "presence_penalty": sampling.presence_penalty or None,
        "frequency_penalty": sampling.frequency_penalty or None,
        "repetition_penalty": sampling.repetition_penalty if sampling.repetition_penalty != 1.0 else None,
        "logit_bias": {str(token): bias for token, bias in sampling.logit_bias.items()} or None,
    }
    body.update({"temperature": sampling.temperature, "top_p": sampling.top_p})
    body.update({name: value for name, value in optional.items() if value is not None})
    prompt = request.prompt
    if isinstance(prompt, ChatPrompt):
        messages = list(prompt.messages)
        if request.continuation:
            if continuation == "none":
                raise UnsupportedParameter("this upstream cannot continue a partial answer", param="messages")
            messages.append({"role": "assistant", "content": request.continuation})
            body.update(continue_final_message=True, add_generation_prompt=False)
        return "/chat/completions", {**body, "messages": messages}
    if prompt.token_ids is not None:
        if request.continuation:
            raise UnsupportedParameter("a token-id prompt cannot be continued with text", param="prompt")
        return "/completions", {**body, "prompt": list(prompt.token_ids)}
    return "/completions", {**body, "prompt": (prompt.text or "") + request.continuation}


def chunk_choice(event: dict) -> tuple[str, list[int], str | None]:
    """Text delta, token ids (vLLM's ``return_token_ids``, else none) and finish reason of a chunk."""
    choices = event.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return "", [], None
    choice = choices[0]
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    token_ids = choice.get("token_ids")
    valid_ids = isinstance(token_ids, list) and all(isinstance(t, int) for t in token_ids)
    return text if isinstance(text, str) else "", token_ids if valid_ids else [], choice.get("finish_reason")


def finish_event(finish_reason: str | None, usage: dict, counted_tokens: int) -> FinishEvent:
    """The end of an upstream stream: its finish reason (``stop`` if unknown) and usage, else what was counted."""
    return FinishEvent(
        finish_reason if finish_reason in _FINISH_REASONS else "stop",
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or counted_tokens),
    )


class OpenAIBackend:
    """Generations from OpenAI-compatible upstreams, read by the local reader when there is one."""

    name = "openai"
    continues = False  # the reader reads each relayed call from the prompt: a continuation would skip the prefix

    def __init__(self, pool: UpstreamPool, reader: "Reader | None" = None, continuation: str = "none") -> None:
        self.pool = pool
        self.reader = reader
        self._continuation = continuation

    @property
    def passthrough(self) -> bool:
        """Requests may be relayed unchanged: there is no reader, so nothing to monitor or gate."""
        return self.reader is None

    @property
    def ready(self) -> bool:
        return self.pool.ready and (self.reader is None or self.reader.ready)

    def model_names(self) -> list[str]:
        return self.pool.model_names()

    @property
    def calibration(self) -> Calibration | None:
        """What the reader's monitors judge with (None without a reader: nothing is monitored)."""
        return self.reader.calibration if self.reader is not None else None

    async def start(self) -> None:
        await self.pool.start()
        if self.reader is not None:
            await self.reader.start()

    async def close(self) -> None:
        await self.pool.close()
        if self.reader is not None:
            self.reader.close()

    def relay(self, call: RelayCall) -> AsyncIterator[RelayItem]:
        """Relay a client's request as sent, each choice read by the reader when there is one (``reader_relay``)."""
        return relay_through_reader(self.pool, self.reader, call)

    def feature_tap(self, call: RelayCall) -> FeatureTap:
        """No engine features here, and the reader reads only chat and text completions."""
        return FeatureTap(call, None, "endpoint")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        path, body = upstream_request(request, self._continuation)
        response = await self.pool.open(path, orjson.dumps(body), model=request.model, request_id=request.request_id)
        reading: ReadingSession | None = None
        try:
            if not response.ok:
                raise await response.error()
            check_event_stream(response)
            if self.reader is not None and request.monitor:
                reading = await self.reader.open(request)
            yield StartEvent(prompt_tokens=None)
            finish_reason, usage, chunks = None, {}, 0
            async for batch in event_batches(response):
                text = ""
                for _, event in batch:
                    piece, _, reason = chunk_choice(event)
                    text += piece
                    chunks += bool(piece)
                    finish_reason = reason or finish_reason
                    usage = event.get("usage") or usage
                for token in await self._tokens(reading, text):
                    yield token
            if reading is not None:
                for token in await reading.finish():
                    yield token
            yield finish_event(finish_reason, usage, chunks)
        finally:
            if reading is not None:
                reading.close()
            await response.aclose()

    @staticmethod
    async def _tokens(reading: "ReadingSession | None", text: str) -> list[TokenEvent]:
        if not text:
            return []
        if reading is None:
            return [TokenEvent(text, None)]
        return await reading.read(text)


def openai_backend(
    settings: Settings, bands: tuple[LayerBand, ...] | None, window: int, calibration: Calibration | None
) -> OpenAIBackend:
    """The ``openai`` backend the settings describe (with a reader of ``--model`` when ``--reader``)."""
    reader = None
    if settings.reader:
        from gateway.backends.reader import Reader

        options = calibration.extractor_options() if calibration else None
        reader = Reader(
            settings.model, settings.served_name(), bands, window, options, settings.reader_max_streams, calibration
        )
    return OpenAIBackend(UpstreamPool.from_settings(settings), reader, settings.upstream_continuation)
