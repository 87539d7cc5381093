"""The FastAPI application: routes, error mapping, and the backend's lifecycle."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import __version__, metrics
from gateway.api import health, openai_routes
from gateway.api.error_handlers import install_error_handlers
from gateway.api.metrics_port import serve_metrics_apart
from gateway.api.middleware import install_middleware
from gateway.backends.base import Backend
from gateway.backends.openai import openai_backend
from gateway.backends.vllm import vllm_backend
from gateway.config import Settings
from gateway.drain import Drain
from gateway.engine.config import EngineConfig
from gateway.security.reload import KeyReloader, admission_for
from gateway.serving.context import ServingContext
from gateway.workers.context import WorkerContext
from gateway.workers.exposition import WorkerExpositions, serve_exposition
from monitors.bands import parse_bands
from monitors.calibration import Calibration, load_calibration

log = logging.getLogger(__name__)


def resolve_calibration(settings: Settings) -> Calibration | None:
    """The configured calibration file, else the one shipped for the served model, else none."""
    try:
        return load_calibration(settings.calibration or settings.served_name())
    except FileNotFoundError as missing:
        if settings.calibration:
            raise
        log.warning("%s: serving without stability verdicts", missing)
        return None


def build_backend(settings: Settings, calibration: Calibration | None) -> Backend:
    """The backend named by the settings."""
    bands = parse_bands(settings.bands) if settings.bands else calibration.bands if calibration else None
    engine = EngineConfig(
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        max_model_len=settings.max_model_len,
        capture=settings.capture,
        window=calibration.window if calibration else EngineConfig.window,
    )
    extractor_options = calibration.extractor_options() if calibration else None
    if settings.backend == "openai":
        return openai_backend(settings, bands, engine.window, extractor_options)
    if settings.backend == "vllm":
        return vllm_backend(settings, calibration, bands)
    from gateway.backends.embedded import EmbeddedBackend  # torch and the model: only for this backend

    return EmbeddedBackend(settings.model, settings.served_name(), engine, bands, extractor_options)


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
    if calibration is None:
        calibration = resolve_calibration(settings)
    backend = backend or build_backend(settings, calibration)
    shared = worker.buckets if worker else None
    admission = admission_for(settings, shared)
    reloader = KeyReloader(admission, settings, reload_settings or (lambda: settings), shared)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.BUILD_INFO.info({"version": __version__, "backend": backend.name})
        metrics.watch_event_loop(asyncio.get_running_loop())
        starting = asyncio.create_task(_start(backend, calibration))
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

    # FastAPI's own OpenTelemetry hooks cost a provider lookup per request; metrics are Prometheus here.
    telemetry = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(title="sinkwatch", version=__version__, lifespan=lifespan, telemetry=telemetry)
    drain = Drain()
    app.state.serving = ServingContext(settings, backend, calibration, started_at=int(time.time()), drain=drain)
    app.state.worker_expositions = (
        WorkerExpositions(worker.exposition_paths(), restarts=worker.restarts) if worker else None
    )
    install_error_handlers(app)
    app.state.fast_path = install_middleware(app, settings, backend, drain, admission)
    app.include_router(openai_routes.router)
    app.include_router(health.router)
    return app


async def _serve_metrics(settings: Settings, worker: WorkerContext | None) -> Callable[[], None]:
    """A worker serves its own metrics to its siblings (the supervisor serves ``--metrics-port``); a single
    process serves ``--metrics-port`` itself. Returns what stops it."""
    if worker is None:
        return serve_metrics_apart(settings)
    server = await serve_exposition(worker.exposition_path(worker.index))
    return server.close


async def _start(backend: Backend, calibration: Calibration | None) -> None:
    try:
        await backend.start()
    except Exception:
        log.exception("backend %s failed to start", backend.name)
        raise
    for model in backend.model_names():
        metrics.model_ready(model, backend.name, calibration)
