"""How each endpoint shapes a generation into OpenAI objects: whole responses and stream chunks."""

from typing import Protocol

from pydantic import BaseModel

from gateway.protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
)
from gateway.protocol.common import Usage
from gateway.protocol.completions import Completion, CompletionChoice
from gateway.protocol.stability import StabilityReport

__all__ = ["ChatShape", "CompletionShape", "ResponseShape"]


class ResponseShape(Protocol):
    """The per-endpoint part of serving; ids, model and creation time are fixed per request."""

    def whole(self, text: str, finish_reason: str, usage: Usage, report: StabilityReport | None) -> BaseModel:
        """The non-streaming response body."""

    def opening(self) -> list[BaseModel]:
        """Chunks sent before any text (the chat role delta)."""

    def delta(self, text: str) -> BaseModel:
        """A chunk carrying a text delta."""

    def closing(self, finish_reason: str, report: StabilityReport | None) -> BaseModel:
        """The chunk carrying the finish reason."""

    def usage(self, usage: Usage, report: StabilityReport | None) -> BaseModel:
        """The usage-only chunk (``stream_options.include_usage``)."""


class ChatShape:
    """``chat.completion`` and ``chat.completion.chunk`` objects."""

    def __init__(self, response_id: str, model: str, created: int) -> None:
        self._ids = {"id": response_id, "model": model, "created": created}

    def whole(self, text: str, finish_reason: str, usage: Usage, report: StabilityReport | None) -> ChatCompletion:
        choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=finish_reason)
        return ChatCompletion(**self._ids, choices=[choice], usage=usage, stability=report)

    def opening(self) -> list[ChatCompletionChunk]:
        return [
            ChatCompletionChunk(**self._ids, choices=[ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))])
        ]

    def delta(self, text: str) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self._ids, choices=[ChatChunkChoice(delta=ChatDelta(content=text))])

    def closing(self, finish_reason: str, report: StabilityReport | None) -> ChatCompletionChunk:
        choice = ChatChunkChoice(delta=ChatDelta(), finish_reason=finish_reason)
        return ChatCompletionChunk(**self._ids, choices=[choice], stability=report)

    def usage(self, usage: Usage, report: StabilityReport | None) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self._ids, choices=[], usage=usage, stability=report)


class CompletionShape:
    """``text_completion`` objects, whole and streamed."""

    def __init__(self, response_id: str, model: str, created: int) -> None:
        self._ids = {"id": response_id, "model": model, "created": created}

    def whole(self, text: str, finish_reason: str, usage: Usage, report: StabilityReport | None) -> Completion:
        choice = CompletionChoice(text=text, finish_reason=finish_reason)
        return Completion(**self._ids, choices=[choice], usage=usage, stability=report)

    def opening(self) -> list[Completion]:
        return []

    def delta(self, text: str) -> Completion:
        return Completion(**self._ids, choices=[CompletionChoice(text=text, finish_reason=None)])

    def closing(self, finish_reason: str, report: StabilityReport | None) -> Completion:
        return Completion(
            **self._ids, choices=[CompletionChoice(text="", finish_reason=finish_reason)], stability=report
        )

    def usage(self, usage: Usage, report: StabilityReport | None) -> Completion:
        return Completion(**self._ids, choices=[], usage=usage, stability=report)
