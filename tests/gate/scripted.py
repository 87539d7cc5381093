"""Scripted backends and monitors: the gate's decisions tested without the model."""

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from gateway.errors import OpenAIError
from gateway.gate.controller import GateController
from gateway.gate.monitor import shifted
from gateway.gate.policy import GateConfig, Policy
from gateway.generation import (
    ChatPrompt,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    StartEvent,
    TokenEvent,
)
from monitors.bands import LayerBand
from monitors.calibration import Calibration, SignalThreshold
from monitors.features import StepFeatures
from monitors.prefill import RequestSampling
from monitors.verdict import Verdict, VerdictLevel

MODEL = "scripted-model"
REQUEST = GenerationRequest(
    "r", MODEL, ChatPrompt(({"role": "user", "content": "hi"},)), SamplingParams(max_tokens=40, temperature=0.0, seed=1)
)


def token_text(attempt: int, index: int) -> str:
    """The text of token ``index`` of a request's ``attempt`` (0: first, k: k-th rescue): ``"attempt.index "``."""
    return f"{attempt}.{index} "


def attempt_of(request: GenerationRequest) -> int:
    """Which attempt of its client request ``request`` is (the gate names rescues ``<id>-rescue<k>``)."""
    _, _, number = request.request_id.rpartition("-rescue")
    return int(number) if number.isdigit() else 0


class ScriptedServing:
    """What every scripted backend serves: :data:`MODEL`, ready at once, nothing to start or close."""

    name = "scripted"
    ready = True

    def model_names(self) -> list[str]:
        return [MODEL]

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


@dataclass
class ScriptedBackend(ScriptedServing):
    """Yields ``lengths[k]`` tokens for attempt k of a request (ids ``100 * k + i`` unless ``ids`` gives them),
    each with an ``entropy`` feature (``entropy(k, i)``, 3.0 by default) and no window statistics.

    ``refuse_from``: attempts from this one on are refused before they start, as a full engine would.
    """

    lengths: list[int]
    ids: Callable[[int, int], int] | None = None
    entropy: Callable[[int, int], float] | None = None
    refuse_from: int | None = None
    requests: list[GenerationRequest] = field(default_factory=list)
    closed: int = 0
    produced: int = 0

    def generate(self, request: GenerationRequest):
        self.requests.append(request)
        attempt = attempt_of(request)
        return self._events(attempt, self.lengths[min(attempt, len(self.lengths) - 1)])

    async def _events(self, attempt: int, length: int):
        try:
            if self.refuse_from is not None and attempt >= self.refuse_from:
                raise OpenAIError("the engine queue is full")
            yield StartEvent(prompt_tokens=10)
            for i in range(length):
                await asyncio.sleep(0)
                self.produced = i + 1
                token = self.ids(attempt, i) if self.ids else 100 * attempt + i
                entropy = self.entropy(attempt, i) if self.entropy else 3.0
                yield TokenEvent(token_text(attempt, i), token, StepFeatures(i, token, 1, {"entropy": entropy}))
            yield FinishEvent("length", 10, length)
        finally:
            self.closed += 1


class ScriptedMonitor:
    """Vouches for every token until ``fire_at`` (index in its attempt), then fires ``sink`` with the
    stable point ``last_stable`` (also in its attempt); never fires when ``fire_at`` is None. ``judges``
    False: a model without a calibration (the gate must not act on it)."""

    def __init__(self, fire_at: int | None, last_stable: int | None = None, judges: bool = True) -> None:
        self.fire_at, self.last_stable = fire_at, last_stable
        self.judges = judges
        self.primed: list[int] = []
        self.tokens = 0
        self.sampling: RequestSampling | None = None
        self.prefill_risk: float | None = None
        self._verdict = Verdict(VerdictLevel.OK, -1)

    def prime(self, token_ids: list[int]) -> None:
        self.primed = list(token_ids)

    def expect_prefill(self, sampling: RequestSampling) -> None:
        self.sampling = sampling

    def observe(self, features: StepFeatures) -> Verdict:
        self.tokens += 1
        if self.fire_at is not None and features.index >= self.fire_at:
            self._verdict = Verdict(VerdictLevel.SINK, features.index, last_stable_token=self.last_stable)
        else:
            self._verdict = Verdict(VerdictLevel.OK, features.index, last_stable_token=features.index)
        return self.verdict

    @property
    def verdict(self) -> Verdict:
        return shifted(self._verdict, len(self.primed))


def controller(backend, policy: Policy, monitors, streaming: bool = True, **config) -> GateController:
    """A controller over ``backend`` whose attempts get ``monitors`` in turn."""
    scripted = iter(monitors)
    return GateController(backend, REQUEST, policy, GateConfig(**config), lambda: next(scripted), streaming)


def run(gate: GateController, backend: ScriptedBackend) -> list[str]:
    """The pieces the gate releases, the first attempt started as the session starts it."""

    async def go():
        events = backend.generate(REQUEST)
        await anext(events)  # the session consumes the StartEvent before handing over
        return [piece async for piece in gate.run(events)]

    return asyncio.run(go())


def loop_after(start: int, rescues_loop: bool = False) -> tuple[Callable, Callable]:
    """Token ids and entropies of a generation that falls into a 3-token, low-entropy loop at ``start``;
    rescue attempts stay varied and confident unless ``rescues_loop``."""

    def looping(attempt: int, i: int) -> bool:
        return i >= start and (attempt == 0 or rescues_loop)

    def ids(attempt: int, i: int) -> int:
        return 1000 + i % 3 if looping(attempt, i) else 100 * attempt + i

    def entropy(attempt: int, i: int) -> float:
        return 0.1 if looping(attempt, i) else 3.0

    return ids, entropy


# A detector on the scripted features only: low entropy and text periodicity, unsmoothed, both must agree.
CALIBRATION = Calibration(
    model=MODEL,
    window=32,
    bands=(LayerBand("late", (1,)),),
    ewma_span=1,
    persistence=4,
    min_agreeing=2,
    target_fpr=0.05,
    signals=(
        SignalThreshold("entropy", "low", 1.0, "sink"),
        SignalThreshold("text.periodicity", "high", 0.25, "sink"),
    ),
    rank_floors={},
)


async def failing_after_three_tokens(events):
    """``events`` (a started generation) until its third token, then an error no layer expected; the
    generation is closed either way."""
    async with aclosing(events):
        count = 0
        async for event in events:
            yield event
            count += 1
            if count == 4:  # the start event and three tokens
                raise RuntimeError("the device fell over")
