"""The generation endpoints: ``/v1/chat/completions`` (messages through the chat template) and the legacy
``/v1/completions`` (a raw prompt). Both build a :class:`GenerationRequest` and hand it to :func:`serve`;
they differ only in the prompt and the response shape."""

from fastapi import Request
from fastapi.responses import Response

from gateway.generation import ChatPrompt, GenerationRequest, TextPrompt
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.completions import CompletionRequest
from gateway.serving.serving_context import ServingContext, new_request_id, now, serve
from gateway.serving.shapes import ChatShape, CompletionShape

__all__ = ["create_chat_completion", "create_completion"]

# Chat templates know system, user and assistant; OpenAI's "developer" is the system role for them.
_TEMPLATE_ROLE = {"developer": "system"}


async def create_chat_completion(body: ChatCompletionRequest, http: Request, ctx: ServingContext) -> Response:
    """Serve one chat completion, streamed or whole."""
    received_at, created = now()
    ctx.check_model(body.model)
    limit, _ = body.completion_limit()
    messages = tuple({"role": _TEMPLATE_ROLE.get(m.role, m.role), "content": m.text()} for m in body.messages)
    request = GenerationRequest(
        request_id=new_request_id("chatcmpl"),
        model=body.model,
        prompt=ChatPrompt(messages),
        sampling=body.sampling(limit),
    )
    shape = ChatShape(request.request_id, body.model, created)
    return await serve(ctx, http, body, request, shape, "chat", received_at)


async def create_completion(body: CompletionRequest, http: Request, ctx: ServingContext) -> Response:
    """Serve one text completion, streamed or whole."""
    received_at, created = now()
    ctx.check_model(body.model)
    prompt = body.single_prompt()
    text_prompt = TextPrompt(text=prompt) if isinstance(prompt, str) else TextPrompt(token_ids=tuple(prompt))
    request = GenerationRequest(
        request_id=new_request_id("cmpl"),
        model=body.model,
        prompt=text_prompt,
        sampling=body.sampling(body.max_tokens),
    )
    shape = CompletionShape(request.request_id, body.model, created)
    return await serve(ctx, http, body, request, shape, "completions", received_at)
