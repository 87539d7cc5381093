"""``/v1/chat/completions``: chat messages through the chat template."""

from fastapi import Request
from fastapi.responses import Response

from gateway.generation import ChatPrompt, GenerationRequest
from gateway.protocol.chat import ChatCompletionRequest
from gateway.serving.context import ServingContext, new_request_id, now, serve
from gateway.serving.shapes import ChatShape

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
