"""``/v1/chat/completions`` request and response models."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictInt, model_validator

from gateway.errors import UnsupportedParameter
from gateway.protocol.common import SamplingFields, StrictModel, Usage
from gateway.protocol.stability import StabilityReport

__all__ = [
    "AssistantMessage",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatDelta",
]


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    """A message; content is text or a list of text parts (other modalities are not served here)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]
    name: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> "ChatMessage":
        if isinstance(self.content, list):
            for i, part in enumerate(self.content):
                if part.get("type") != "text":
                    raise UnsupportedParameter(
                        f"content part type {part.get('type')!r} is not supported; only 'text' parts are",
                        param=f"messages.content[{i}].type",
                    )
                TextPart.model_validate(part)
        return self

    def text(self) -> str:
        """The message content as one string."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content)


_UNSUPPORTED = {
    "tools": "tool calling",
    "tool_choice": "tool calling",
    "parallel_tool_calls": "tool calling",
    "functions": "function calling",
    "function_call": "function calling",
    "audio": "audio output",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
    "reasoning_effort": "reasoning effort (the served model is not a reasoning model)",
    "verbosity": "verbosity",
    "moderation": "moderation",
}


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    moderation: Any = None

    @model_validator(mode="after")
    def _chat_supported(self) -> "ChatCompletionRequest":
        for name, feature in _UNSUPPORTED.items():
            if getattr(self, name) is not None:
                raise UnsupportedParameter(f"{feature} is not supported by this server", param=name)
        if self.logprobs or self.top_logprobs is not None:
            raise UnsupportedParameter("logprobs are not supported by this server", param="logprobs")
        if self.response_format is not None and self.response_format.get("type") != "text":
            raise UnsupportedParameter("only response_format type 'text' is supported", param="response_format")
        if self.modalities is not None and self.modalities != ["text"]:
            raise UnsupportedParameter("only the 'text' modality is supported", param="modalities")
        return self

    def completion_limit(self) -> tuple[int | None, str]:
        """The requested completion limit and the parameter it came from."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    stability: StabilityReport | None = Field(None, exclude_if=lambda v: v is None)


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(None, exclude_if=lambda v: v is None)
    stability: StabilityReport | None = Field(None, exclude_if=lambda v: v is None)
