"""What every request handler needs: settings, the backend, the calibration, and the policy."""

import time
import uuid
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from gateway.backends.base import Backend
from gateway.config import Settings
from gateway.errors import ModelNotFound
from gateway.generation import GenerationRequest
from gateway.protocol.common import SamplingFields
from gateway.serving.monitoring import RequestMonitor
from gateway.serving.respond import streaming_response, whole_response
from gateway.serving.session import GenerationSession, RequestLabels
from gateway.serving.shapes import ResponseShape
from monitors.calibration import Calibration


@dataclass
class ServingContext:
    """Shared, read-only state of the running gateway."""

    settings: Settings
    backend: Backend
    calibration: Calibration | None
    started_at: int

    def check_model(self, name: str) -> None:
        """404 in OpenAI's format for a model this gateway does not serve."""
        if name not in self.backend.model_names():
            raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")

    def policy_for(self, body: SamplingFields) -> str:
        """The request's policy: the ``sinkwatch`` body extension, else the server default."""
        if body.sinkwatch is not None and body.sinkwatch.policy is not None:
            return body.sinkwatch.policy
        return self.settings.policy

    def monitor_for(self, policy: str) -> RequestMonitor | None:
        """A fresh monitor, or None when hidden states are not captured."""
        if self.calibration is None or not self.settings.capture:
            return None
        return RequestMonitor(self.calibration, policy)


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
    session = GenerationSession(ctx.backend, request, ctx.monitor_for(ctx.policy_for(body)), labels, received_at)
    await session.start()
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return streaming_response(session, shape, include_usage)
    return await whole_response(session, shape, http)


def now() -> tuple[float, int]:
    """A monotonic timestamp for latency and the wall-clock second for ``created``."""
    return time.perf_counter(), int(time.time())
