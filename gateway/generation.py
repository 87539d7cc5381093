"""The seam between serving and engines: what a :class:`Backend` is asked for and what it yields."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from monitors.calibration import Calibration
from monitors.features import StepFeatures

__all__ = [
    "Backend",
    "ChatPrompt",
    "FeaturesUpstream",
    "FinishEvent",
    "FinishReason",
    "GenerationEvent",
    "GenerationRequest",
    "SamplingParams",
    "StartEvent",
    "TextPrompt",
    "TokenEvent",
    "TokenLogprob",
    "TokenLogprobs",
]

FinishReason = Literal["stop", "length", "content_filter"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; ``temperature == 0`` means greedy, ``max_tokens=None`` the context left."""

    max_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # report each token's log-probability and this many most likely; None: none


@dataclass(frozen=True)
class ChatPrompt:
    """Chat messages, rendered with the model's chat template by the backend."""

    messages: tuple[dict, ...]


@dataclass(frozen=True)
class TextPrompt:
    """A raw completion prompt (text, or token ids for the legacy endpoint)."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: prompt, sampling, and the continuation already accepted (for rescue)."""

    request_id: str
    model: str
    prompt: ChatPrompt | TextPrompt
    sampling: SamplingParams
    continuation: str = ""
    monitor: bool = True
    n: int = 1  # choices of the same prompt asked for together (each is a request of its own)


@dataclass(frozen=True, slots=True)
class StartEvent:
    """The backend accepted the request (always the first event); prompt size when known up front."""

    prompt_tokens: int | None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token's text, its raw bytes and its log-probability under the model's distribution."""

    token: str
    logprob: float
    raw: bytes


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """The sampled token's log-probability and the most likely tokens at its step, most likely first."""

    sampled: TokenLogprob
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token: its text delta (may be empty while bytes are incomplete), its features, and its
    log-probabilities when the request asked for them."""

    text: str
    token_id: int | None
    features: StepFeatures | None = None
    logprobs: TokenLogprobs | None = None


@dataclass(frozen=True, slots=True)
class FinishEvent:
    """The end of a generation."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


GenerationEvent = StartEvent | TokenEvent | FinishEvent


class Backend(Protocol):
    """A source of generations. ``generate`` raises an ``OpenAIError`` for a request it cannot serve."""

    name: str

    @property
    def ready(self) -> bool:
        """True once the backend can serve requests."""

    def model_names(self) -> list[str]:
        """Names of the models served."""

    async def start(self) -> None:
        """Load or connect; called once before serving."""

    async def close(self) -> None:
        """Release everything; called once at shutdown."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream the generation's events: one ``StartEvent`` once the request is accepted, token events,
        then exactly one ``FinishEvent``."""


@runtime_checkable
class FeaturesUpstream(Protocol):
    """A backend whose features are computed upstream (the vLLM plugin, from its own calibration file): a
    calibration reloaded while serving is the backend's to take, and the features follow the upstream's own
    reload, so the gateway's feature setup is not its to keep."""

    def use_calibration(self, calibration: Calibration) -> None:
        """Expect features computed under ``calibration`` for requests from now on."""
