"""What every request handler needs: settings, the backend, the calibration, and the policy."""

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from gateway.config import Settings
from gateway.drain import Drain
from gateway.errors import ModelNotFound
from gateway.gate.holdback import required_lag
from gateway.gate.monitor import RequestMonitor
from gateway.gate.policy import POLICY_HEADER, GateConfig, Policy, resolve_policy
from gateway.generation import Backend, GenerationRequest, SamplingParams
from gateway.protocol.common import SamplingFields
from gateway.recording.recorder import TrafficRecorder
from gateway.recording.shadow import ShadowRecording
from gateway.recording.trace import calibration_setup
from gateway.serving.respond import streaming_response, whole_response
from gateway.serving.session import GenerationSession, RequestLabels
from gateway.serving.shapes import ResponseShape
from monitors.calibration import Calibration

__all__ = [
    "RECORDED_SAMPLING",
    "ServingContext",
    "choice_requests",
    "new_request_id",
    "now",
    "recorded_context",
    "serve",
]

# Sampling parameters a shadow record keeps: those that make loops more or less likely, and the length cap.
RECORDED_SAMPLING = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "max_tokens",
    "seed",
)


@dataclass
class ServingContext:
    """Shared state of the running gateway (read-only but for ``calibration``: settled once the backend started,
    an uncalibrated model's profile needs the model; replaced by a reload on SIGHUP)."""

    settings: Settings
    backend: Backend
    calibration: Calibration | None
    started_at: int
    drain: Drain
    recorder: TrafficRecorder | None = None
    calibration_digest: str = ""

    def use_calibration(self, calibration: Calibration | None, digest: str) -> None:
        """Judge new requests with ``calibration`` (requests under way keep the monitors they have)."""
        self.calibration, self.calibration_digest = calibration, digest
        self.__dict__.pop("gate_config", None)
        self.__dict__.pop("recording_setup", None)

    @cached_property
    def recording_setup(self) -> dict[str, Any]:
        """What every record says of the calibration its signals were computed with."""
        return calibration_setup(self.calibration, self.calibration_digest) if self.calibration else {}

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

    def monitor_factory(
        self, policy: Policy | None = None, context: dict[str, Any] | None = None
    ) -> Callable[[], RequestMonitor | None]:
        """Makes a fresh monitor per attempt, or None when hidden states are not captured. Under ``observe``
        with ``--record-dir`` each monitor records its generation, described by ``context`` (model, backend,
        endpoint, sampling)."""
        calibration = self.calibration if self.settings.capture else None
        if calibration is None:
            return lambda: None
        recorder = self.recorder if policy is Policy.OBSERVE else None
        if recorder is None:
            return lambda: RequestMonitor(calibration)
        described = {**(context or {}), **self.recording_setup}
        return lambda: RequestMonitor(calibration, ShadowRecording(recorder, described))


def recorded_context(labels: RequestLabels, sampling: SamplingParams) -> dict[str, Any]:
    """What a shadow record says of an embedded request: model, backend, endpoint and the sampling that
    shapes loops."""
    return {
        "model": labels.model,
        "backend": labels.backend,
        "endpoint": labels.endpoint,
        "sampling": {name: getattr(sampling, name) for name in RECORDED_SAMPLING},
    }


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
    policy = ctx.policy_for(body, http)
    session = GenerationSession(
        ctx.backend,
        choice_requests(request, body.n or 1),
        policy,
        ctx.gate_config_for(body),
        ctx.monitor_factory(policy, recorded_context(labels, request.sampling)),
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
