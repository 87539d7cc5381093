"""The FastAPI application: routes, error mapping, and the backend's lifecycle."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import __version__, metrics
from gateway.api import health, openai_routes
from gateway.api.error_handlers import install_error_handlers
from gateway.backends.base import Backend
from gateway.backends.embedded import EmbeddedBackend
from gateway.config import Settings
from gateway.engine.engine import EngineConfig
from gateway.serving.context import ServingContext
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
    mean_states = calibration.mean_state_arrays() if calibration else None
    return EmbeddedBackend(settings.model, settings.served_name(), engine, bands, mean_states)


def create_app(settings: Settings, backend: Backend | None = None, calibration: Calibration | None = None) -> FastAPI:
    """Build the gateway. The backend starts in the background: ``/readyz`` says when it is ready."""
    if calibration is None:
        calibration = resolve_calibration(settings)
    backend = backend or build_backend(settings, calibration)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.BUILD_INFO.info({"version": __version__, "backend": backend.name})
        starting = asyncio.create_task(_start(backend))
        try:
            yield
        finally:
            starting.cancel()
            await backend.close()

    app = FastAPI(title="sinkwatch", version=__version__, lifespan=lifespan)
    app.state.serving = ServingContext(settings, backend, calibration, started_at=int(time.time()))
    install_error_handlers(app)
    app.include_router(openai_routes.router)
    app.include_router(health.router)
    return app


async def _start(backend: Backend) -> None:
    try:
        await backend.start()
    except Exception:
        log.exception("backend %s failed to start", backend.name)
        raise
    for model in backend.model_names():
        metrics.MODEL_READY.labels(model, backend.name).set(1)
