"""The seam between relay serving and the backends that relay: what a relayed call is and what it yields.

A :class:`RelayBackend` sends the client's body upstream (plus what monitoring needs) and yields, in order,
one :class:`RelayStart`, then for a stream each choice's :class:`Fragment` (one choice of one upstream
chunk, as sent) and :class:`ChoiceToken` (a token of that choice with its features) and every
:class:`Trailer` (an upstream event without choices, e.g. the usage chunk); for a whole answer one
:class:`WholeAnswer`. For a ``gated`` call a fragment always comes after the tokens whose output it
carries, so the gate can hold it back until the detector has vouched for them; otherwise the tokens may
come later (at the end), so that no chunk waits for features nothing acts on before the end.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gateway.generation import TokenEvent
from gateway.upstream.pool import UpstreamPool
from monitors.features import StepFeatures

__all__ = [
    "ChoiceToken",
    "FeatureSource",
    "FeatureTap",
    "Fragment",
    "RelayBackend",
    "RelayCall",
    "RelayItem",
    "RelayStart",
    "TokenKind",
    "Trailer",
    "WholeAnswer",
    "delta_kind",
    "message_kinds",
]

TokenKind = Literal["content", "reasoning", "tool_calls"]


@dataclass(frozen=True)
class RelayCall:
    """One upstream call: ``body`` is the client's (``sinkwatch`` removed); ``monitor`` asks for features;
    ``gated``: the policy may act on a verdict while the answer streams (block, rescue)."""

    path: str
    body: dict
    model: str
    request_id: str
    monitor: bool = True
    gated: bool = True

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def choices(self) -> int:
        """How many choices the answer has (``n``; the upstream validates it)."""
        n = self.body.get("n")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


@dataclass(frozen=True, slots=True)
class RelayStart:
    """The upstream accepted the call; ``unmonitored`` says why it is not monitored (None: it is)."""

    unmonitored: str | None


@dataclass(frozen=True, slots=True)
class Fragment:
    """One choice of one upstream chunk: ``envelope`` is the chunk without ``choices``, ``choice`` the choice."""

    index: int
    envelope: dict
    choice: dict


@dataclass(frozen=True, slots=True)
class ChoiceToken:
    """A generated token of choice ``index``, of the kind of delta it was generated for."""

    index: int
    token: TokenEvent
    kind: str  # a TokenKind; a whole answer mixing kinds names them together, e.g. "reasoning+content"


@dataclass(frozen=True, slots=True)
class Trailer:
    """An upstream event that carries no choice (the usage chunk), relayed after every choice ended."""

    event: dict


@dataclass(frozen=True)
class WholeAnswer:
    """A non-streamed answer as the upstream sent it, and each choice's tokens in order."""

    body: dict
    tokens: dict[int, list[ChoiceToken]] = field(default_factory=dict)


RelayItem = RelayStart | Fragment | ChoiceToken | Trailer | WholeAnswer


class FeatureSource(Protocol):
    """The features of one generation's tokens, taken in order (``gateway.backends.vllm_stats.FeatureStream``)."""

    async def take(self, index: int, token_id: int | None) -> StepFeatures | None:
        """Features of token ``index`` (None when they did not come)."""

    def close(self) -> None:
        """Stop collecting."""


@dataclass(frozen=True)
class FeatureTap:
    """A call tagged for the engine's features, where the backend can have them (else why not)."""

    call: RelayCall
    features: FeatureSource | None
    unmonitored: str | None


class RelayBackend(Protocol):
    """A backend that relays calls unchanged and reports the tokens it monitored."""

    name: str
    pool: UpstreamPool
    continues: bool  # a partial chat answer can be continued (``continue_final_message``): rescue resumes it

    @property
    def ready(self) -> bool:
        """True once the backend can relay."""

    def relay(self, call: RelayCall) -> AsyncIterator[RelayItem]:
        """Send ``call`` upstream; raises the upstream's error (4xx as sent) before :class:`RelayStart`."""

    def feature_tap(self, call: RelayCall) -> FeatureTap:
        """``call`` tagged so that the engine publishes its tokens' features (for answers without choices)."""


def delta_kind(delta: dict) -> TokenKind:
    """What a streamed delta carries: tool-call arguments, reasoning, or content."""
    if delta.get("tool_calls"):
        return "tool_calls"
    if delta.get("reasoning_content") or delta.get("reasoning"):
        return "reasoning"
    return "content"


def message_kinds(message: dict) -> list[TokenKind]:
    """The kinds of tokens a whole message holds, in the order a model generates them."""
    kinds: list[TokenKind] = []
    if message.get("reasoning_content") or message.get("reasoning"):
        kinds.append("reasoning")
    if message.get("content"):
        kinds.append("content")
    if message.get("tool_calls"):
        kinds.append("tool_calls")
    return kinds
