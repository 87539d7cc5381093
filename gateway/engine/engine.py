"""The embedded engine: one decode thread runs every active request in a single left-padded batch.

Requests join the running batch after their own prefill and leave it the step after they finish or
their client goes away, each with its own sampling parameters and seeded generator. Forward hooks
capture the residual stream at the monitored layers; each request's states feed its own feature
window. Decoding runs on a thread so the event loop never blocks on the model.
"""

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import nullcontext
from typing import Any, TypeVar

import numpy as np
import torch
from transformers import DynamicCache

from gateway import metrics
from gateway.engine.batch import BatchCache
from gateway.engine.detokenizer import IncrementalDetokenizer
from gateway.engine.engine_config import EngineConfig
from gateway.engine.loader import LoadedModel
from gateway.engine.logprobs import TokenTexts, step_logprobs
from gateway.engine.sampling import RowSampler
from gateway.errors import EngineFailure, InvalidRequest, Overloaded
from gateway.generation import (
    ChatPrompt,
    FinishEvent,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    TokenEvent,
    TokenLogprobs,
)
from monitors.bands import LayerBand
from monitors.capture import ResidualCapture
from monitors.entropy import next_token_entropies
from monitors.features import FeatureExtractor, StepFeatures

__all__ = ["EmbeddedEngine", "encode_prompt"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def _thread_safe_put(
    loop: asyncio.AbstractEventLoop, queue: asyncio.Queue
) -> Callable[[GenerationEvent | BaseException], None]:
    """A callable the decode thread uses to hand events to a request's queue on the event loop."""

    def put(event: GenerationEvent | BaseException) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(queue.put_nowait, event)

    return put


class _Sequence:
    """One request inside the engine: its tokens, sampler, detokenizer and feature window."""

    def __init__(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        emit: Callable[[GenerationEvent | BaseException], None],
        sampler: RowSampler,
        detokenizer: IncrementalDetokenizer,
        extractor: FeatureExtractor | None,
    ) -> None:
        self.request = request
        self.prompt_ids = prompt_ids
        self.emit = emit
        self.sampler = sampler
        self.detokenizer = detokenizer
        self.extractor = extractor
        self.output_ids: list[int] = []
        self.finished = False
        self.cancelled = False

    def finish(self, reason: FinishReason) -> None:
        tail = self.detokenizer.flush()
        if tail:
            self.emit(TokenEvent(tail, None))
        self.emit(FinishEvent(reason, len(self.prompt_ids), len(self.output_ids)))
        self.finished = True


async def _events_of(
    sequence: "_Sequence", events: "asyncio.Queue[GenerationEvent | BaseException]"
) -> AsyncIterator[GenerationEvent]:
    """A submitted sequence's events until its finish; leaving early marks it cancelled."""
    try:
        while True:
            event = await events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, FinishEvent):
                return
    finally:
        sequence.cancelled = True


def encode_prompt(loaded: LoadedModel, request: GenerationRequest) -> list[int]:
    """Token ids of the prompt (chat template applied) plus any accepted continuation."""
    tokenizer = loaded.tokenizer
    prompt = request.prompt
    if isinstance(prompt, ChatPrompt):
        text = tokenizer.apply_chat_template(list(prompt.messages), add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
    elif prompt.token_ids is not None:
        ids = list(prompt.token_ids)
        if any(not 0 <= t < loaded.vocab_size for t in ids):
            raise InvalidRequest("prompt contains token ids outside the vocabulary", param="prompt")
    else:  # the tokenizer's own special tokens, as vLLM's completions: Gemma's <bos>, nothing for SmolLM2
        ids = tokenizer.encode(prompt.text or "", add_special_tokens=True)
    if request.continuation:
        ids += tokenizer.encode(request.continuation, add_special_tokens=False)
    if not ids:
        raise InvalidRequest("the prompt is empty", param="prompt")
    return ids


class EmbeddedEngine:
    """In-process continuous batching over a transformers model, with hidden-state capture."""

    def __init__(
        self,
        loaded: LoadedModel,
        config: EngineConfig,
        bands: tuple[LayerBand, ...],
        extractor_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = config
        self.bands = bands
        self._extractor_options = dict(extractor_options or {})  # from Calibration.extractor_options()
        self._capture = None
        if config.capture:
            layers = sorted({layer for band in bands for layer in band.layers})
            self._capture = ResidualCapture(loaded.decoder_layers, layers)
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._batch = BatchCache()
        self._token_texts = TokenTexts(loaded.tokenizer)
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the decode thread."""
        self._thread = threading.Thread(target=self._run, name="sinkwatch-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the decode thread; requests still running get an engine error."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def waiting(self) -> int:
        """Requests queued for a batch slot."""
        return len(self._waiting)

    @property
    def active(self) -> int:
        """Requests currently decoding."""
        return len(self._active)

    # ---- requests --------------------------------------------------------------------------------

    def encode_prompt(self, request: GenerationRequest) -> list[int]:
        """Token ids of the prompt (chat template applied) plus any accepted continuation."""
        return encode_prompt(self.loaded, request)

    def submit(self, request: GenerationRequest, prompt_ids: list[int]) -> AsyncIterator[GenerationEvent]:
        """Queue a request now (raising ``Overloaded`` when the queue is full); iterate the result for its
        events. Closing the iterator early frees the slot."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent | BaseException] = asyncio.Queue()
        extractor = None
        if self._capture is not None and request.monitor:
            extractor = FeatureExtractor(self.bands, self.config.window, **self._extractor_options)
        sequence = _Sequence(
            request,
            prompt_ids,
            emit=_thread_safe_put(loop, events),
            sampler=RowSampler(request.sampling, prompt_ids, self.loaded.vocab_size),
            detokenizer=IncrementalDetokenizer(self.loaded.tokenizer, request.sampling.stop),
            extractor=extractor,
        )
        with self._cond:
            if self._closing:
                raise EngineFailure("the engine is shutting down")
            if len(self._waiting) >= self.config.max_queue:
                raise Overloaded(f"the engine queue is full ({self.config.max_queue} waiting); retry later")
            self._waiting.append(sequence)
            self._cond.notify()
        return _events_of(sequence, events)

    # ---- decode thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode(), self._capture.attached() if self._capture else nullcontext():
            while True:
                with self._cond:
                    while not (self._waiting or self._active or self._closing):
                        self._cond.wait()
                    if self._closing:
                        break
                    admitted = []
                    while self._waiting and len(self._active) + len(admitted) < self.config.max_batch:
                        admitted.append(self._waiting.popleft())
                for sequence in admitted:
                    if not sequence.cancelled:
                        self._prefill(sequence)
                self._retire()
                if not self._active:
                    continue
                try:
                    self._decode_step()
                except Exception as exc:  # the batch's forward pass: every client of the batch must hear of it
                    log.exception("decode step failed for a batch of %d", len(self._active))
                    self._fail_active(EngineFailure(f"generation failed: {type(exc).__name__}"))
                self._retire()
        with self._cond:
            self._active.extend(self._waiting)
            self._waiting.clear()
        self._fail_active(EngineFailure("the engine shut down"))

    def _prefill(self, sequence: _Sequence) -> None:
        """Run the prompt alone, emit the first token, then join the running batch."""
        cache = DynamicCache()
        ids = torch.tensor([sequence.prompt_ids])
        try:
            out = self.loaded.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            self._advance([sequence], out.logits[:, -1].float())
        except Exception as exc:  # a failed prefill fails its own request only
            log.exception("prefill failed for request %s", sequence.request.request_id)
            sequence.emit(EngineFailure(f"prefill failed: {type(exc).__name__}"))
            sequence.finished = True
            return
        if not sequence.finished:
            self._batch.join(cache, len(sequence.prompt_ids))
            self._active.append(sequence)

    def _decode_step(self) -> None:
        input_ids = torch.tensor([[s.output_ids[-1]] for s in self._active])
        mask, positions = self._batch.step_inputs()
        out = self.loaded.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=self._batch.cache,
            use_cache=True,
        )
        self._advance(self._active, out.logits[:, -1].float())

    def _advance(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        """Sample one token for each sequence, emit it with its features (and log-probabilities when asked),
        finish those that are done.

        Each sequence's own work (sampling, detokenising, stop strings) fails that sequence alone.
        """
        monitored = any(s.extractor is not None for s in sequences)
        states = self._capture.take().numpy() if self._capture is not None else None
        token_entropy = next_token_entropies(logits).tolist() if monitored else None
        tokens = [
            self._guarded(sequence, "sampling", sequence.sampler.sample, row)
            for sequence, row in zip(sequences, logits, strict=True)
        ]
        features = self._features(sequences, states, token_entropy, tokens) if monitored else [None] * len(tokens)
        wanted = [
            None if token is None else sequence.request.sampling.logprobs
            for sequence, token in zip(sequences, tokens, strict=True)
        ]
        logprobs = step_logprobs(logits, tokens, wanted, self._token_texts)
        for sequence, token, token_features, token_logprobs in zip(sequences, tokens, features, logprobs, strict=True):
            if token is not None:
                self._guarded(sequence, "detokenising", self._emit, sequence, token, token_features, token_logprobs)

    def _emit(
        self, sequence: _Sequence, token: int, features: StepFeatures | None, logprobs: TokenLogprobs | None
    ) -> None:
        """Hand one sampled token to its client; finish the sequence at EOS, a stop string or its limit."""
        sequence.output_ids.append(token)
        if token in self.loaded.eos_token_ids:  # the end of the answer: no text, so no logprobs entry
            sequence.emit(TokenEvent("", token, features))
            sequence.finish("stop")
            return
        sequence.emit(TokenEvent(sequence.detokenizer.push(token), token, features, logprobs))
        if sequence.detokenizer.stopped:
            sequence.finish("stop")
        elif len(sequence.output_ids) >= sequence.request.sampling.max_tokens:
            sequence.finish("length")

    @staticmethod
    def _guarded(sequence: _Sequence, stage: str, step: Callable[..., _T], *args: Any) -> _T | None:
        """``step(*args)``, or None after failing ``sequence`` alone (logged with its traceback) if it raises."""
        try:
            return step(*args)
        except Exception as exc:
            log.exception("%s failed for request %s", stage, sequence.request.request_id)
            sequence.emit(EngineFailure(f"generation failed while {stage}: {type(exc).__name__}"))
            sequence.finished = True
            return None

    @staticmethod
    def _features(
        sequences: list[_Sequence], states: np.ndarray, token_entropy: list[float], tokens: list[int | None]
    ) -> list[StepFeatures | None]:
        """Each monitored row's features (rows whose sampling failed have none), computed for the whole step."""
        rows = [
            row for row, sequence in enumerate(sequences) if sequence.extractor is not None and tokens[row] is not None
        ]
        pushed = FeatureExtractor.push_many(
            [sequences[row].extractor for row in rows],
            states[rows],
            [token_entropy[row] for row in rows],
            [tokens[row] for row in rows],
        )
        features: list[StepFeatures | None] = [None] * len(sequences)
        for row, row_features in zip(rows, pushed, strict=True):
            features[row] = row_features
        return features

    def _retire(self) -> None:
        """Drop finished and abandoned sequences from the batch."""
        keep = [i for i, s in enumerate(self._active) if not (s.finished or s.cancelled)]
        if len(keep) != len(self._active):
            self._batch.keep(keep)
            self._active = [self._active[i] for i in keep]
        metrics.ENGINE_ACTIVE.set(len(self._active))
        metrics.ENGINE_WAITING.set(len(self._waiting))

    def _fail_active(self, error: EngineFailure) -> None:
        """End every sequence in the batch with ``error`` and start from an empty batch."""
        doomed, self._active, self._batch = self._active, [], BatchCache()
        for sequence in doomed:
            if not sequence.finished:
                sequence.emit(error)
                sequence.finished = True
