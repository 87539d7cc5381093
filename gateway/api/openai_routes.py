"""The OpenAI-compatible routes. Thin: parse, hand to serving, return."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.errors import ModelNotFound
from gateway.protocol.chat import ChatCompletion, ChatCompletionRequest
from gateway.protocol.common import ErrorResponse
from gateway.protocol.completions import Completion, CompletionRequest
from gateway.protocol.models import ModelCard, ModelList
from gateway.serving.endpoints import create_chat_completion, create_completion
from gateway.serving.serving_context import ServingContext

__all__ = ["router"]

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 500, 502, 504)}

router = APIRouter(prefix="/v1", responses=_ERRORS)


def _context(http: Request) -> ServingContext:
    return http.app.state.serving


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, http: Request) -> Response:
    """Create a chat completion (``stream: true`` for server-sent events)."""
    return await create_chat_completion(body, http, _context(http))


@router.post("/completions", response_model=Completion)
async def completions(body: CompletionRequest, http: Request) -> Response:
    """Create a text completion (legacy)."""
    return await create_completion(body, http, _context(http))


@router.get("/models", response_model=ModelList)
async def list_models(http: Request) -> ModelList:
    """The models this gateway serves."""
    ctx = _context(http)
    return ModelList(data=[ModelCard(id=name, created=ctx.started_at) for name in ctx.backend.model_names()])


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def retrieve_model(model_id: str, http: Request) -> ModelCard:
    """One served model."""
    ctx = _context(http)
    if model_id not in ctx.backend.model_names():
        raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
    return ModelCard(id=model_id, created=ctx.started_at)
