"""Legacy ``/v1/completions`` request and response models."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictInt, model_validator

from gateway.errors import UnsupportedParameter
from gateway.protocol.common import SamplingFields, Usage
from gateway.protocol.stability import StabilityReport

__all__ = ["Completion", "CompletionChoice", "CompletionRequest"]


def _is_batch(prompt: object) -> bool:
    """A list of prompts (strings or token lists) rather than one prompt."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], (str, list))


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = 16
    best_of: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None

    @model_validator(mode="after")
    def _completion_supported(self) -> "CompletionRequest":
        if _is_batch(self.prompt) and len(self.prompt) != 1:
            raise UnsupportedParameter("batched prompts are not supported; send one prompt", param="prompt")
        if self.best_of not in (None, 1):
            raise UnsupportedParameter("best_of > 1 is not supported", param="best_of")
        if self.echo:
            raise UnsupportedParameter("echo is not supported", param="echo")
        if self.suffix:
            raise UnsupportedParameter("suffix is not supported", param="suffix")
        if self.logprobs is not None:
            raise UnsupportedParameter("logprobs are not supported by this server", param="logprobs")
        return self

    def single_prompt(self) -> str | list[int]:
        """The one prompt, as text or token ids."""
        return self.prompt[0] if _is_batch(self.prompt) else self.prompt


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = Field(None, exclude_if=lambda v: v is None)
    stability: StabilityReport | None = Field(None, exclude_if=lambda v: v is None)
