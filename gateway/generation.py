"""The seam between serving and engines: what a :class:`Backend` is asked for and what it yields."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from monitors.features import StepFeatures

__all__ = [
    "Backend",
    "ChatPrompt",
    "FinishEvent",
    "FinishReason",
    "GenerationEvent",
    "GenerationRequest",
    "SamplingParams",
    "StartEvent",
    "TextPrompt",
    "TokenEvent",
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


@dataclass(frozen=True, slots=True)
class StartEvent:
    """The backend accepted the request (always the first event); prompt size when known up front."""

    prompt_tokens: int | None


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token: its text delta (may be empty while bytes are incomplete) and its features."""

    text: str
    token_id: int | None
    features: StepFeatures | None = None


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
