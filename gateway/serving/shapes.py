"""How each endpoint shapes a generation into OpenAI objects: whole responses and stream chunks."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from gateway.generation import TokenLogprob, TokenLogprobs
from gateway.protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    TopLogprob,
)
from gateway.protocol.common import Usage
from gateway.protocol.completions import Completion, CompletionChoice, CompletionLogprobs
from gateway.protocol.stability import StabilityReport
from gateway.serving.session import Piece

__all__ = ["ChatShape", "ChoiceResult", "CompletionShape", "ResponseShape"]


@dataclass(frozen=True)
class ChoiceResult:
    """One finished choice of a whole (non-streamed) answer; ``report`` only when there are several."""

    index: int
    text: str
    finish_reason: str
    logprobs: tuple[TokenLogprobs, ...]
    report: StabilityReport | None


class ResponseShape(Protocol):
    """The per-endpoint part of serving; ids, model, creation time and whether log-probabilities were asked
    for are fixed per request."""

    def whole(self, choices: Sequence[ChoiceResult], usage: Usage, report: StabilityReport | None) -> BaseModel:
        """The non-streaming response body."""

    def opening(self, n: int) -> list[BaseModel]:
        """Chunks sent before any text (the chat role delta of each choice)."""

    def delta(self, piece: Piece) -> BaseModel:
        """A chunk carrying one choice's text delta and its tokens' log-probabilities."""

    def closing(
        self, choice: int, finish_reason: str, choice_report: StabilityReport | None, report: StabilityReport | None
    ) -> BaseModel:
        """The chunk carrying a choice's finish reason (and its own report when there are several choices);
        ``report``: the top-level report, on the last chunk of the answer."""

    def usage(self, usage: Usage, report: StabilityReport | None) -> BaseModel:
        """The usage-only chunk (``stream_options.include_usage``)."""


def _top(entry: TokenLogprob) -> TopLogprob:
    return TopLogprob(token=entry.token, logprob=entry.logprob, bytes=list(entry.raw))


def _chat_entry(logprobs: TokenLogprobs) -> ChatTokenLogprob:
    sampled = logprobs.sampled
    return ChatTokenLogprob(
        token=sampled.token,
        logprob=sampled.logprob,
        bytes=list(sampled.raw),
        top_logprobs=[_top(entry) for entry in logprobs.top],
    )


class ChatShape:
    """``chat.completion`` and ``chat.completion.chunk`` objects."""

    def __init__(self, response_id: str, model: str, created: int, logprobs: bool) -> None:
        self._ids = {"id": response_id, "model": model, "created": created}
        self._logprobs = logprobs

    def _content_logprobs(self, entries: Sequence[TokenLogprobs]) -> ChatLogprobs | None:
        return ChatLogprobs(content=[_chat_entry(e) for e in entries]) if self._logprobs else None

    def whole(self, choices: Sequence[ChoiceResult], usage: Usage, report: StabilityReport | None) -> ChatCompletion:
        shaped = [
            ChatChoice(
                index=choice.index,
                message=AssistantMessage(content=choice.text),
                finish_reason=choice.finish_reason,
                logprobs=self._content_logprobs(choice.logprobs),
                stability=choice.report,
            )
            for choice in choices
        ]
        return ChatCompletion(**self._ids, choices=shaped, usage=usage, stability=report)

    def opening(self, n: int) -> list[ChatCompletionChunk]:
        return [
            ChatCompletionChunk(
                **self._ids, choices=[ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))]
            )
            for index in range(n)
        ]

    def delta(self, piece: Piece) -> ChatCompletionChunk:
        choice = ChatChunkChoice(
            index=piece.choice, delta=ChatDelta(content=piece.text), logprobs=self._content_logprobs(piece.logprobs)
        )
        return ChatCompletionChunk(**self._ids, choices=[choice])

    def closing(
        self, choice: int, finish_reason: str, choice_report: StabilityReport | None, report: StabilityReport | None
    ) -> ChatCompletionChunk:
        closing = ChatChunkChoice(index=choice, delta=ChatDelta(), finish_reason=finish_reason, stability=choice_report)
        return ChatCompletionChunk(**self._ids, choices=[closing], stability=report)

    def usage(self, usage: Usage, report: StabilityReport | None) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self._ids, choices=[], usage=usage, stability=report)


class CompletionShape:
    """``text_completion`` objects, whole and streamed; ``text_offset`` runs on across a choice's chunks."""

    def __init__(self, response_id: str, model: str, created: int, logprobs: bool) -> None:
        self._ids = {"id": response_id, "model": model, "created": created}
        self._logprobs = logprobs
        self._offsets: dict[int, int] = {}

    def _choice_logprobs(self, choice: int, entries: Sequence[TokenLogprobs]) -> CompletionLogprobs | None:
        if not self._logprobs:
            return None
        offset = self._offsets.get(choice, 0)
        offsets = []
        for entry in entries:
            offsets.append(offset)
            offset += len(entry.sampled.token)
        self._offsets[choice] = offset
        return CompletionLogprobs(
            tokens=[entry.sampled.token for entry in entries],
            token_logprobs=[entry.sampled.logprob for entry in entries],
            top_logprobs=[
                {top.token: top.logprob for top in entry.top} | {entry.sampled.token: entry.sampled.logprob}
                for entry in entries
            ],
            text_offset=offsets,
        )

    def whole(self, choices: Sequence[ChoiceResult], usage: Usage, report: StabilityReport | None) -> Completion:
        shaped = [
            CompletionChoice(
                index=choice.index,
                text=choice.text,
                finish_reason=choice.finish_reason,
                logprobs=self._choice_logprobs(choice.index, choice.logprobs),
                stability=choice.report,
            )
            for choice in choices
        ]
        return Completion(**self._ids, choices=shaped, usage=usage, stability=report)

    def opening(self, n: int) -> list[Completion]:
        return []

    def delta(self, piece: Piece) -> Completion:
        choice = CompletionChoice(
            index=piece.choice,
            text=piece.text,
            finish_reason=None,
            logprobs=self._choice_logprobs(piece.choice, piece.logprobs),
        )
        return Completion(**self._ids, choices=[choice])

    def closing(
        self, choice: int, finish_reason: str, choice_report: StabilityReport | None, report: StabilityReport | None
    ) -> Completion:
        closing = CompletionChoice(index=choice, text="", finish_reason=finish_reason, stability=choice_report)
        return Completion(**self._ids, choices=[closing], stability=report)

    def usage(self, usage: Usage, report: StabilityReport | None) -> Completion:
        return Completion(**self._ids, choices=[], usage=usage, stability=report)
