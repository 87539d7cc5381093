"""The OpenAI-compatible routes of the backends that relay (``vllm``, ``openai``): the client's body is read as
JSON and checked only where the gateway acts on it (model, stream, the ``sinkwatch`` extension, the policy
header); the rest is the upstream's to accept or refuse (its 4xx pass through as sent).

Chat and text completions are relayed and monitored (:mod:`gateway.relay.session`); ``/v1/responses`` is
monitored on the ``vllm`` backend (:mod:`gateway.relay.responses`; under block and rescue, held back and
cut by :mod:`gateway.relay.responses_gate`); ``/v1/embeddings`` and, on the ``openai``
backend, ``/v1/responses`` have no monitored path and are relayed marked unmonitored;
``/v1/models`` lists the upstreams' own model cards. The embedded backend serves
:mod:`gateway.api.openai_routes` instead, whose strict models refuse what its engine cannot do.
"""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gateway.errors import ModelNotFound, NotReady
from gateway.gate.policy import POLICY_HEADER, Policy, resolve_policy
from gateway.protocol.common import ErrorResponse
from gateway.proxy.checks import ParsedRequest, parsed_request
from gateway.relay.plain import Marking, Reporter, relay_marked
from gateway.relay.respond import relay_stream, relay_whole
from gateway.relay.responses import ResponsesReporter
from gateway.relay.responses_gate import ResponsesGate, relay_gated_responses
from gateway.relay.seam import RelayCall
from gateway.relay.session import RelaySession, unmonitored_report
from gateway.request_metrics import RequestSeries
from gateway.serving.serving_context import RECORDED_SAMPLING, ServingContext, new_request_id, now
from gateway.telemetry.request_scope import current_scope

__all__ = ["router"]

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 500, 502, 504)}

router = APIRouter(prefix="/v1", responses=_ERRORS)


def _context(http: Request) -> ServingContext:
    return http.app.state.serving


async def _accepted(http: Request, endpoint: str) -> tuple[ServingContext, ParsedRequest, Policy]:
    """The checked request and its policy, once the backend is ready and serves its model."""
    ctx = _context(http)
    header_policy = http.headers.get(POLICY_HEADER)
    parsed = parsed_request(await http.body(), endpoint, header_policy)
    if not ctx.backend.ready:
        raise NotReady("no upstream is ready; retry shortly")
    ctx.check_model(parsed.request["model"])
    return ctx, parsed, resolve_policy(ctx.gate_config, parsed.body_policy, header_policy)


def relayed_context(request: dict, endpoint: str, backend: str) -> dict:
    """What a shadow record says of a relayed request: model, backend, endpoint and the sampling parameters
    the client set (``max_completion_tokens`` as ``max_tokens``)."""
    sampling = {name: request[name] for name in RECORDED_SAMPLING if name in request}
    if "max_completion_tokens" in request:
        sampling["max_tokens"] = request["max_completion_tokens"]
    return {"model": request["model"], "backend": backend, "endpoint": endpoint, "sampling": sampling}


async def _monitored(http: Request, endpoint: str, path: str, prefix: str) -> Response:
    received_at, _ = now()
    ctx, parsed, policy = await _accepted(http, endpoint)
    model = parsed.request["model"]
    call = RelayCall(path, parsed.request, model, new_request_id(prefix), gated=policy.acts)
    series = RequestSeries.of(model, endpoint, ctx.backend.name)
    monitors = ctx.calibration is not None and ctx.settings.capture
    session = RelaySession(
        ctx.backend,
        call,
        policy,
        ctx.gate_config,
        ctx.monitor_factory(policy, relayed_context(parsed.request, endpoint, ctx.backend.name)),
        series,
        received_at,
        parsed.include_usage,
        monitors,
    )
    await session.start()
    if call.stream:
        return relay_stream(session, endpoint)
    return await relay_whole(session, http)


async def _answer(http: Request, endpoint: str, path: str, prefix: str) -> Response:
    """An answer without choices: monitored where the backend can tap its features, else marked unmonitored."""
    received_at, _ = now()
    ctx, parsed, policy = await _accepted(http, endpoint)
    model = parsed.request["model"]
    call = RelayCall(path, parsed.request, model, new_request_id(prefix))
    tap = ctx.backend.feature_tap(call) if endpoint == "responses" else None
    monitor = ctx.monitor_factory()() if tap is not None and tap.features is not None else None
    series = RequestSeries.of(model, endpoint, ctx.backend.name)
    scope = current_scope()
    if scope is not None:
        scope.served(endpoint, model)
        scope.policy = policy.value
    if monitor is not None and policy.acts and monitor.judges:  # an uncalibrated model is only annotated
        gate = ResponsesGate(tap.features, monitor, policy, ctx.gate_config)
        return await relay_gated_responses(ctx.backend.pool, tap.call, gate, series, received_at)
    if monitor is not None:
        reporter: Reporter = ResponsesReporter(tap.features, monitor, policy)
        call = tap.call
    else:
        if tap is not None and tap.features is not None:
            tap.features.close()
        reason = (tap.unmonitored or "uncalibrated") if tap is not None else "endpoint"
        reporter = Marking(unmonitored_report(reason, policy).model_dump(mode="json"))
    return await relay_marked(ctx.backend.pool, call, reporter, series, received_at, endpoint)


@router.post("/chat/completions")
async def chat_completions(http: Request) -> Response:
    """Create a chat completion, relayed to the upstream and monitored (``stream: true`` for events)."""
    return await _monitored(http, "chat", "/chat/completions", "chatcmpl")


@router.post("/completions")
async def completions(http: Request) -> Response:
    """Create a text completion (legacy), relayed and monitored."""
    return await _monitored(http, "completions", "/completions", "cmpl")


@router.post("/responses")
async def responses(http: Request) -> Response:
    """Create a response (the Responses API), relayed; monitored where the backend has a path for it."""
    return await _answer(http, "responses", "/responses", "resp")


@router.post("/embeddings")
async def embeddings(http: Request) -> Response:
    """Create embeddings, relayed unmonitored (nothing is generated)."""
    return await _answer(http, "embeddings", "/embeddings", "embd")


@router.get("/models")
async def list_models(http: Request) -> JSONResponse:
    """The upstreams' models, with their own cards."""
    return JSONResponse({"object": "list", "data": _context(http).backend.pool.model_cards()})


@router.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, http: Request) -> JSONResponse:
    """One upstream model's card."""
    for card in _context(http).backend.pool.model_cards():
        if card.get("id") == model_id:
            return JSONResponse(card)
    raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
