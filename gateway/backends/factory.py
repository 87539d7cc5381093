"""Which backend and calibration the settings ask for, built (the embedded model's heavy imports only when
it is the one asked for)."""

import logging
from pathlib import Path

from gateway.backends.openai import openai_backend
from gateway.backends.vllm import vllm_backend
from gateway.config import Settings
from gateway.engine.engine_config import EngineConfig
from gateway.generation import Backend
from monitors.bands import parse_bands
from monitors.calibration import Calibration, load_calibration

__all__ = ["build_backend", "resolve_calibration"]

log = logging.getLogger(__name__)


def resolve_calibration(settings: Settings) -> Calibration | None:
    """The configured calibration file, else the one shipped for the served model, else none (the backend
    then serves the model uncalibrated: no other model's thresholds ever judge it). A configured file that
    does not exist is an error, unless ``await_calibration`` (it is written later and loaded on SIGHUP)."""
    try:
        return load_calibration(settings.calibration or settings.served_name())
    except FileNotFoundError as missing:
        if settings.calibration and not settings.await_calibration:
            raise
        log.warning("%s: serving it uncalibrated", missing)
        return None


def build_backend(settings: Settings, calibration: Calibration | None) -> Backend:
    """The backend named by the settings."""
    bands = parse_bands(settings.bands) if settings.bands else calibration.bands if calibration else None
    engine = EngineConfig(
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        max_model_len=settings.max_model_len,
        default_max_tokens=settings.default_max_tokens,
        max_tokens_limit=settings.max_tokens_limit,
        capture=settings.capture,
        window=calibration.window if calibration else EngineConfig.window,
    )
    if settings.backend == "openai":
        return openai_backend(settings, bands, engine.window, calibration)
    if settings.backend == "vllm":
        return vllm_backend(settings, calibration, bands)
    from gateway.backends.embedded import EmbeddedBackend  # torch and the model: only for this backend

    chat_template = Path(settings.chat_template).read_text() if settings.chat_template else None
    return EmbeddedBackend(settings.model, settings.served_name(), engine, bands, calibration, chat_template)
