"""What every request handler needs: settings, the backend, the calibration, and the policy."""

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

from fastapi import Request
from fastapi.responses import Response

from gateway.config import Settings
from gateway.drain import Drain
from gateway.errors import ModelNotFound
from gateway.gate.holdback import required_lag
from gateway.gate.monitor import RequestMonitor
from gateway.gate.policy import POLICY_HEADER, GateConfig, Policy, resolve_policy
from gateway.generation import Backend, GenerationRequest
from gateway.protocol.common import SamplingFields
from gateway.serving.respond import streaming_response, whole_response
from gateway.serving.session import GenerationSession, RequestLabels
from gateway.serving.shapes import ResponseShape
from monitors.calibration import Calibration

__all__ = ["ServingContext", "choice_requests", "new_request_id", "now", "serve"]


@dataclass
class ServingContext:
    """Shared, read-only state of the running gateway (``calibration`` is settled once the backend started: an
    uncalibrated model's profile needs the model)."""

    settings: Settings
    backend: Backend
    calibration: Calibration | None
    started_at: int
    drain: Drain

    @cached_property
    def gate_config(self) -> GateConfig:
        """The gate settings, with the automatic hold-back taken from the calibration."""
        config = self.settings.gate_config()
        if config.holdback_tokens < 0:
            judges = self.calibration is not None and self.calibration.calibrated
            config = replace(config, holdback_tokens=required_lag(self.calibration) if judges else 0)
        return config

    def check_model(self, name: str) -> None:
        """404 in OpenAI's format for a model this gateway does not serve."""
        if name not in self.backend.model_names():
            raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")

    def policy_for(self, body: SamplingFields, http: Request) -> Policy:
        """The request's policy: the ``sinkwatch`` body extension, then the header, then the default."""
        body_policy = body.sinkwatch.policy if body.sinkwatch is not None else None
        return resolve_policy(self.gate_config, body_policy, http.headers.get(POLICY_HEADER))

    def gate_config_for(self, body: SamplingFields) -> GateConfig:
        """The gate settings of one request: its ``sinkwatch.block_at`` when overrides are allowed."""
        block_at = body.sinkwatch.block_at if body.sinkwatch is not None else None
        if block_at is None or not self.gate_config.allow_override:
            return self.gate_config
        return replace(self.gate_config, block_at=block_at)

    def monitor_factory(self) -> Callable[[], RequestMonitor | None]:
        """Makes a fresh monitor per attempt, or None when hidden states are not captured."""
        calibration = self.calibration if self.settings.capture else None
        return lambda: RequestMonitor(calibration) if calibration is not None else None


def new_request_id(prefix: str) -> str:
    """OpenAI-style ids: ``chatcmpl-…``, ``cmpl-…``."""
    return f"{prefix}-{uuid.uuid4().hex}"


async def serve(
    ctx: ServingContext,
    http: Request,
    body: SamplingFields,
    request: GenerationRequest,
    shape: ResponseShape,
    endpoint: str,
    received_at: float,
) -> Response:
    """Start the generation (refusals become HTTP errors), then answer whole or streamed."""
    labels = RequestLabels(model=request.model, endpoint=endpoint, backend=ctx.backend.name)
    session = GenerationSession(
        ctx.backend,
        choice_requests(request, body.n or 1),
        ctx.policy_for(body, http),
        ctx.gate_config_for(body),
        ctx.monitor_factory(),
        streaming=bool(body.stream),
        labels=labels,
        received_at=received_at,
    )
    await session.start()
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return streaming_response(session, shape, include_usage, ctx.drain)
    return await whole_response(session, shape, http, ctx.drain)


def choice_requests(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """The generations of ``n`` choices of one prompt: each its own request id and, when the request is
    seeded, its own seed (``seed + index``, as vLLM), so that sampled choices differ and each reproduces."""
    if n == 1:
        return [request]
    seed = request.sampling.seed
    return [
        replace(
            request,
            request_id=f"{request.request_id}-{index}",
            n=n,
            sampling=replace(request.sampling, seed=None if seed is None else seed + index),
        )
        for index in range(n)
    ]


def now() -> tuple[float, int]:
    """A monotonic timestamp for latency and the wall-clock second for ``created``."""
    return time.perf_counter(), int(time.time())
