"""Legacy ``/v1/completions``: a raw prompt, no chat template."""

from fastapi import Request
from fastapi.responses import Response

from gateway.generation import GenerationRequest, TextPrompt
from gateway.protocol.completions import CompletionRequest
from gateway.serving.context import ServingContext, new_request_id, now, serve
from gateway.serving.shapes import CompletionShape


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
