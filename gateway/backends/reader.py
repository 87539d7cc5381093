"""The reader: a local model that reads another model's streamed text to monitor it.

Upstreams that cannot be instrumented send text only. The reader teacher-forces that text through the
embedded model as it streams in: each arriving chunk is tokenized with the reader's tokenizer and run
in one prefill on top of the request's KV cache, with capture hooks on the calibrated layers; the
hidden states and next-token entropy at the position *before* each token give that token's
``StepFeatures`` through the same ``FeatureExtractor`` the embedded engine uses. The features describe
how the reader model represents the text, not the upstream's own states: thresholds calibrated on the
reader's own generations are a proxy, and calibrating on the upstream's normal traffic is better.

Tokens are committed when they are stable: the last word of the text received so far can still be
tokenized differently when more text arrives (``" jum"`` + ``"ps"``), so it waits for the next space or
the end. Each
token's text is the slice of the received text it covers, so the pieces always add up to exactly
what the upstream sent. All reading runs on one worker thread (never the event loop); while it is busy,
text keeps arriving and the next prefill takes all of it, so chunks coalesce under load. At most
``max_streams`` requests are read at once; the others are served unmonitored.
"""

import asyncio
import bisect
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from gateway.engine.engine import encode_prompt
from gateway.engine.loader import LoadedModel, load_model
from gateway.engine.provision import provision
from gateway.generation import GenerationRequest, TextPrompt, TokenEvent
from monitors.bands import LayerBand, captured_layers, default_bands
from monitors.calibration import Calibration
from monitors.capture import ResidualCapture
from monitors.entropy import next_token_entropies
from monitors.features import FeatureExtractor
from monitors.model_profile import profile_model, uncalibrated

__all__ = ["Reader", "ReadingSession"]

log = logging.getLogger(__name__)


class Reader:
    """Loads the reader model once and opens one :class:`ReadingSession` per monitored request."""

    def __init__(
        self,
        model: str,
        served_name: str,
        bands: tuple[LayerBand, ...] | None,
        window: int,
        extractor_options: dict[str, Any] | None = None,
        max_streams: int = 4,
        calibration: Calibration | None = None,
    ) -> None:
        self._model = model
        self._served_name = served_name
        self._bands = bands
        # What the monitors judge the read text with; without one, the reader model's own profile, derived
        # once it is loaded, and the requests are monitored uncalibrated.
        self.calibration = calibration
        self.window = window
        self._extractor_options = dict(extractor_options or {})
        self.max_streams = max_streams
        self.loaded: LoadedModel | None = None
        self.bands: tuple[LayerBand, ...] = ()
        self.capture: ResidualCapture | None = None
        self.active = 0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sinkwatch-reader")

    @property
    def ready(self) -> bool:
        return self.loaded is not None

    async def start(self) -> None:
        """Provision and load the model (on the worker thread)."""
        loop = asyncio.get_running_loop()
        self.loaded = await loop.run_in_executor(self._worker, self._load)
        log.info("reader ready: %s", self._served_name)

    def _load(self) -> LoadedModel:
        loaded = load_model(provision(self._model), self._served_name)
        if self.calibration is None:
            self.calibration = uncalibrated(self._served_name, profile_model(loaded.model, loaded.tokenizer))
            self._extractor_options = self._extractor_options or self.calibration.extractor_options()
            log.warning("reader %s has no calibration: the read requests are monitored uncalibrated", self._served_name)
        self.bands = self._bands or self.calibration.bands or default_bands(loaded.num_layers)
        self.capture = ResidualCapture(loaded.decoder_layers, captured_layers(self.bands), all_positions=True)
        return loaded

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    async def open(self, request: GenerationRequest) -> "ReadingSession | None":
        """A session reading this request's completion, or None (not loaded, too busy, or a token-id prompt,
        which only the upstream's tokenizer understands). The prompt is templated and tokenized on the
        worker thread, never on the event loop."""
        prompt = request.prompt
        if self.loaded is None or self.active >= self.max_streams:
            return None
        if isinstance(prompt, TextPrompt) and prompt.token_ids is not None:
            return None
        prompt_ids = await self.run(encode_prompt, self.loaded, request)
        if self.active >= self.max_streams:  # others opened while this prompt was tokenized
            return None
        return ReadingSession(self, prompt_ids)

    async def run(self, function, *args) -> Any:
        """Run ``function`` on the reader's worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, function, *args)


_LAST_WORD = re.compile(r"\s\S*$")
UNBROKEN_TEXT = 64


def _stable_tokens(tail: str, offsets: list[tuple[int, int]]) -> int:
    """How many leading tokens of ``tail`` more text cannot change: those that end before the last word
    (the word, with the space before it, may still grow: "jum" + "ps"). Text with no space for
    ``UNBROKEN_TEXT`` characters (some scripts have none) commits all but its last two tokens."""
    last_word = _LAST_WORD.search(tail)
    if last_word is None or len(tail) - last_word.start() > UNBROKEN_TEXT:
        return max(0, len(offsets) - 2) if len(tail) > UNBROKEN_TEXT else 0
    return bisect.bisect_right([end for _, end in offsets], last_word.start())


class ReadingSession:
    """Reads one completion: feed it text as it arrives, get back token events with features."""

    def __init__(self, reader: Reader, prompt_ids: list[int]) -> None:
        self._reader = reader
        self._loaded = reader.loaded
        self._unfed = list(prompt_ids)
        self._cache = DynamicCache()
        self._last: tuple[np.ndarray, float] | None = None
        self._extractor = FeatureExtractor(reader.bands, reader.window, **reader._extractor_options)
        self._text = ""
        self._committed = 0
        self._closed = False
        reader.active += 1

    async def read(self, text: str) -> list[TokenEvent]:
        """Take more of the completion's text; events for the tokens that became stable."""
        self._text += text
        return await self._commit(final=False)

    async def finish(self) -> list[TokenEvent]:
        """The completion ended: events for every token not yet committed."""
        return await self._commit(final=True)

    async def _commit(self, final: bool) -> list[TokenEvent]:
        tail = self._text[self._committed :]
        if not tail:
            return []
        encoded = self._loaded.tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)
        ids, starts = encoded["input_ids"], [start for start, _ in encoded["offset_mapping"]]
        keep = len(ids) if final else _stable_tokens(tail, encoded["offset_mapping"])
        if keep <= 0:
            return []
        ends = [*starts[1:keep], starts[keep] if keep < len(ids) else len(tail)]
        pieces = [tail[start:end] for start, end in zip([0, *starts[1:keep]], ends, strict=True)]
        self._committed += ends[-1]
        features = await self._reader.run(self._features, ids[:keep])
        return [TokenEvent(piece, token, feature) for piece, token, feature in zip(pieces, ids, features, strict=False)]

    @torch.inference_mode()
    def _features(self, token_ids: list[int]):
        """One prefill of the unfed prompt (first time) and ``token_ids``; each token's features."""
        if self._closed:
            return []
        fed = self._unfed + token_ids
        self._unfed = []
        keep = len(token_ids) + (1 if len(fed) > len(token_ids) else 0)
        capture = self._reader.capture
        with capture.attached():
            out = self._loaded.model(
                input_ids=torch.tensor([fed]), cache=self._cache, use_cache=True, logits_to_keep=keep
            )
            states = capture.take()[0, -keep:].numpy()
        token_entropy = next_token_entropies(out.logits[0]).numpy()
        outputs = [(states[i], float(token_entropy[i])) for i in range(keep)]
        if self._last is not None:
            outputs.insert(0, self._last)
        self._last = outputs.pop()
        return [self._extractor.push(s, e, t) for (s, e), t in zip(outputs, token_ids, strict=True)]

    def close(self) -> None:
        """Free the KV cache and the stream slot."""
        if not self._closed:
            self._closed = True
            self._reader.active -= 1
            self._cache = None
