"""Requests on their way into the embedded engine: refused early when obviously too long, tokenized off the
event loop, given their completion limit.

Chat templating and tokenizing a long prompt take seconds of CPU; on the event loop they would stall every
other request and the health probes. They run on one tokenizer thread (the tokenizer is not safe to drive
from several threads at once). Before that, a prompt with more characters than the context can hold is
refused without tokenizing: no token covers more characters than the vocabulary's longest token, so
``characters / longest token`` is a lower bound on the prompt's tokens.
"""

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from gateway.engine.engine import encode_prompt
from gateway.engine.engine_config import EngineConfig
from gateway.engine.loader import LoadedModel
from gateway.errors import ContextLengthExceeded, InvalidRequest
from gateway.generation import ChatPrompt, GenerationRequest

__all__ = ["RequestIntake"]


def _prompt_chars(request: GenerationRequest) -> int:
    """Characters of text the prompt brings (message contents, or the raw prompt), continuation included."""
    prompt = request.prompt
    if isinstance(prompt, ChatPrompt):
        chars = sum(len(message.get("content") or "") for message in prompt.messages)
    else:
        chars = len(prompt.text or "")
    return chars + len(request.continuation)


class RequestIntake:
    """Turns a request into (request with its completion limit, prompt token ids), or a 400."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        self._loaded = loaded
        self._config = config
        self.context = min(config.max_model_len, loaded.max_context)
        self._tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sinkwatch-tokenizer")

    async def prepare(self, request: GenerationRequest) -> tuple[GenerationRequest, list[int]]:
        """Check the limits, tokenize off the loop, and fill in ``max_tokens`` when the request names none."""
        prompt_param = "messages" if isinstance(request.prompt, ChatPrompt) else "prompt"
        if prompt_param == "messages" and not self._loaded.tokenizer.chat_template:
            # vLLM's answer to the same request, with the same remedy
            raise InvalidRequest(
                f"{self._loaded.name} has no chat template (a base model): use /v1/completions, or serve it with "
                "--chat-template FILE. As of transformers v4.44, default chat template is no longer allowed, so "
                "you must provide a chat template if the tokenizer does not define one.",
                param="messages",
                code="chat_template_missing",
            )
        requested = request.sampling.max_tokens
        limit = self._config.max_tokens_limit
        if requested is not None and limit and requested > limit:
            raise InvalidRequest(
                f"max_tokens is too large: {requested}. This server allows at most {limit} completion tokens.",
                param="max_tokens",
            )
        self._refuse_obviously_long(request, prompt_param)
        loop = asyncio.get_running_loop()
        prompt_ids = await loop.run_in_executor(self._tokenizer, encode_prompt, self._loaded, request)
        max_tokens = self._completion_limit(requested, len(prompt_ids))
        self._check_fits(len(prompt_ids), max_tokens, prompt_param)
        return replace(request, sampling=replace(request.sampling, max_tokens=max_tokens)), prompt_ids

    def close(self) -> None:
        """Stop the tokenizer thread (prompts still queued are dropped)."""
        self._tokenizer.shutdown(wait=False, cancel_futures=True)

    def _completion_limit(self, requested: int | None, prompt_length: int) -> int:
        """The request's own limit, else ``default_max_tokens`` (0: the context left), never past the context."""
        if requested is not None:
            return requested
        left = self.context - prompt_length
        default = self._config.default_max_tokens
        return min(default, left) if default else left

    def _refuse_obviously_long(self, request: GenerationRequest, prompt_param: str) -> None:
        """A 400 before tokenizing when the prompt has at least as many tokens as the context."""
        token_ids = getattr(request.prompt, "token_ids", None)
        if token_ids is not None:
            at_least = len(token_ids)
        else:
            at_least = math.ceil(_prompt_chars(request) / self._loaded.max_token_chars)
        if at_least >= self.context:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context} tokens. However, your prompt has at "
                f"least {at_least} tokens. Please reduce the length of the prompt.",
                param=prompt_param,
            )

    def _check_fits(self, prompt_length: int, max_tokens: int, prompt_param: str) -> None:
        """A 400 when prompt plus ``max_tokens`` (at least one token) exceed the context."""
        requested = prompt_length + max(max_tokens, 1)
        if requested > self.context:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context} tokens. However, you requested "
                f"{requested} tokens ({prompt_length} in the prompt, {max(max_tokens, 1)} in the "
                "completion). Please reduce the length of the prompt or completion.",
                param=prompt_param if prompt_length >= self.context else "max_tokens",
            )
