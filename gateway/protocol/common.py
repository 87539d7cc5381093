"""Pieces shared by the chat and legacy completion protocols."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from gateway.errors import InvalidRequest, UnsupportedParameter
from gateway.generation import SamplingParams

__all__ = ["ErrorResponse", "GateOptions", "SamplingFields", "StrictModel", "Usage"]

# Stop sequences per request (OpenAI's limit) and characters per stop sequence (this server's: matching is
# linear in the generated text, but each stop string costs its length in memory and set-up per request).
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 1024


class StrictModel(BaseModel):
    """Rejects unknown fields, as OpenAI does ("Unrecognized request argument supplied")."""

    model_config = ConfigDict(extra="forbid")


class StreamOptions(StrictModel):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class GateOptions(StrictModel):
    """The ``sinkwatch`` request extension (sent by the openai client through ``extra_body``)."""

    policy: Literal["observe", "annotate", "block", "rescue"] | None = None
    block_at: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="block and rescue act once stability.risk reaches this probability"
    )


class SamplingFields(StrictModel):
    """Sampling parameters common to both endpoints, with OpenAI's ranges.

    Strict types: a boolean is no number (``temperature: true``), a float no count (``max_tokens: 4.0``),
    as OpenAI and vLLM answer; the proxy fast path checks the counts it reads the same way
    (``gateway.proxy.checks``). Ranges keep out infinities; strict JSON keeps out NaN.
    """

    model: str
    temperature: Annotated[StrictFloat, Field(ge=0, le=2)] | None = None
    top_p: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None
    seed: Annotated[StrictInt, Field(ge=-(2**63), lt=2**63)] | None = None
    stop: str | list[str] | None = None
    presence_penalty: Annotated[StrictFloat, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[StrictFloat, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[StrictFloat, Field(gt=0, le=10)] | None = None
    logit_bias: dict[str, Annotated[StrictFloat, Field(ge=-100, le=100)]] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    sinkwatch: GateOptions | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    store: bool | None = None

    @model_validator(mode="after")
    def _supported(self) -> "SamplingFields":
        if self.n not in (None, 1):
            raise UnsupportedParameter("n > 1 is not supported; send one request per choice", param="n")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise UnsupportedParameter(f"at most {MAX_STOP_SEQUENCES} stop sequences are supported", param="stop")
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise InvalidRequest(f"a stop sequence may have at most {MAX_STOP_CHARS} characters", param="stop")
        if self.stream_options is not None and not self.stream:
            raise UnsupportedParameter("stream_options is only allowed when stream is true", param="stream_options")
        for key in self.logit_bias or {}:
            if not (key.isascii() and key.isdigit() and int(key) < 2**31):
                raise UnsupportedParameter(f"logit_bias keys must be token ids, not {key[:40]!r}", param="logit_bias")
        return self

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        """The backend-level sampling parameters (OpenAI defaults: temperature 1, top_p 1)."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=stop,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
        )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
