"""The FastAPI application: routes, error mapping, and the backend's lifecycle."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from gateway import __version__, metrics
from gateway.api import health, openai_routes, relay_routes
from gateway.api.error_handlers import install_error_handlers
from gateway.api.middleware_stack import install_middleware
from gateway.backends.factory import build_backend, resolve_calibration
from gateway.config import Settings
from gateway.drain import Drain
from gateway.generation import Backend
from gateway.metrics_port import serve_metrics_apart
from gateway.recording.recorder import TrafficRecorder
from gateway.security.reload import KeyReloader, admission_for
from gateway.serving.calibration_reload import CalibrationReloader, calibration_digest
from gateway.serving.serving_context import ServingContext
from gateway.telemetry import tracing
from gateway.workers.exposition import WorkerExpositions, serve_exposition
from gateway.workers.worker_context import WorkerContext
from monitors.calibration import Calibration, shipped_calibration_path

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    backend: Backend | None = None,
    calibration: Calibration | None = None,
    worker: WorkerContext | None = None,
    reload_settings: Callable[[], Settings] | None = None,
) -> FastAPI:
    """Build the gateway (as one of several ``worker`` processes when given). The backend starts in the
    background, ``/readyz`` says when it is ready; a worker waits for it (its upstreams' first health
    checks) before it takes connections. API keys and rate limits are reloaded on SIGHUP and when the keys
    file changes, from the settings ``reload_settings`` returns (by default the same settings: only the
    keys file is read again)."""
    named = settings.calibration or settings.served_name()  # a file, or a model whose shipped file it is
    awaited = bool(settings.calibration) and settings.await_calibration  # written later, loaded on SIGHUP
    calibration_file = Path(named) if awaited or Path(named).is_file() else shipped_calibration_path(named)
    resolved = calibration is None
    if resolved:
        calibration = resolve_calibration(settings)
    backend = backend or build_backend(settings, calibration)
    recorder = (
        TrafficRecorder(Path(settings.record_dir), settings.record_max_bytes, settings.record_text)
        if settings.record_dir
        else None
    )
    shared = worker.buckets if worker else None
    admission = admission_for(settings, shared)
    reloader = KeyReloader(admission, settings, reload_settings or (lambda: settings), shared)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.BUILD_INFO.info({"version": __version__, "backend": backend.name})
        metrics.watch_event_loop(asyncio.get_running_loop())
        starting = asyncio.create_task(_start(app.state.serving))
        if worker is not None:
            await starting  # a worker takes connections once it knows its upstreams; its siblings serve meanwhile
        stop_metrics = await _serve_metrics(settings, worker)
        reloading = asyncio.create_task(reloader.watch())
        try:
            yield
        finally:
            reloading.cancel()
            starting.cancel()
            await backend.close()
            stop_metrics()
            tracing.flush()
            if recorder is not None:
                await asyncio.to_thread(recorder.close)

    # FastAPI's own OpenTelemetry hooks cost a provider lookup per request; metrics are Prometheus here.
    telemetry = {"tracing": False, "metrics": False, "logs": False}
    # The schema and docs pages describe the deployment to anyone who asks: off unless the operator wants them.
    docs = {"openapi_url": "/openapi.json", "docs_url": "/docs", "redoc_url": "/redoc"}
    if not settings.api_docs:
        docs = dict.fromkeys(docs)
    app = FastAPI(title="sinkwatch", version=__version__, lifespan=lifespan, telemetry=telemetry, **docs)
    drain = Drain()
    digest = calibration_digest(calibration_file) if resolved and calibration_file.is_file() else ""
    serving = ServingContext(settings, backend, calibration, int(time.time()), drain, recorder, digest)
    app.state.serving = serving
    if (calibration is not None and calibration_file.is_file()) or (calibration is None and awaited):
        reloader.on_sighup.append(CalibrationReloader(serving, calibration_file).reload)
    app.state.worker_expositions = (
        WorkerExpositions(worker.exposition_paths(), restarts=worker.restarts) if worker else None
    )
    install_error_handlers(app)
    app.state.fast_path = install_middleware(app, settings, backend, drain, admission)
    # Backends in front of an upstream relay what the client sent; the embedded engine validates strictly.
    app.include_router(relay_routes.router if settings.backend in ("openai", "vllm") else openai_routes.router)
    app.include_router(health.router)
    return app


async def _serve_metrics(settings: Settings, worker: WorkerContext | None) -> Callable[[], None]:
    """A worker serves its own metrics to its siblings (the supervisor serves ``--metrics-port``); a single
    process serves ``--metrics-port`` itself. Returns what stops it."""
    if worker is None:
        return serve_metrics_apart(settings)
    server = await serve_exposition(worker.exposition_path(worker.index))
    return server.close


async def _start(ctx: ServingContext) -> None:
    backend = ctx.backend
    try:
        await backend.start()
    except Exception:
        log.exception("backend %s failed to start", backend.name)
        raise
    # A backend that derives an uncalibrated model's profile, or finds its upstream serves another model than
    # the calibration's, says which calibration its monitors use.
    derived = getattr(backend, "calibration", ctx.calibration)
    if derived is not ctx.calibration:
        ctx.use_calibration(derived, "")  # not the file's: the digest would name another calibration
    for model in backend.model_names():
        metrics.model_ready(model, backend.name, ctx.calibration, ctx.calibration_digest)
        log.info("model %s ready on %s: %s", model, backend.name, _judged_by(ctx.calibration))


def _judged_by(calibration: Calibration | None) -> str:
    """How the readiness line says what judges a model's generations."""
    if calibration is None:
        return "unmonitored (no capture)"
    if not calibration.calibrated:
        return "UNCALIBRATED (monitored, verdict 'uncalibrated', block and rescue do not act)"
    return f"calibration {calibration.model}@{calibration.created}"
