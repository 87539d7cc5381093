"""The embedded backend: provisions the packaged model and serves it from the in-process engine."""

import asyncio
import logging
from collections.abc import AsyncIterator

from gateway.engine.engine import EmbeddedEngine
from gateway.engine.engine_config import EngineConfig
from gateway.engine.intake import RequestIntake
from gateway.engine.loader import load_model
from gateway.engine.provision import provision
from gateway.errors import UnsupportedParameter
from gateway.generation import GenerationEvent, GenerationRequest, StartEvent
from monitors.bands import LayerBand, default_bands, format_bands
from monitors.calibration import Calibration

__all__ = ["EmbeddedBackend"]

log = logging.getLogger(__name__)


class EmbeddedBackend:
    """Runs ``model`` in this process; ``ready`` once the weights are loaded and the engine runs.

    ``calibration``: what the monitors judge with; without one (and with capture on) the model's own profile is
    derived once it is loaded (:mod:`monitors.model_profile`) and the monitors run uncalibrated. Read
    :attr:`calibration` after :meth:`start` for the one in use.
    """

    name = "embedded"

    def __init__(
        self,
        model: str,
        served_name: str,
        config: EngineConfig,
        bands: tuple[LayerBand, ...] | None,
        calibration: Calibration | None = None,
        chat_template: str | None = None,
    ) -> None:
        self._model = model
        self._served_name = served_name
        self._config = config
        self._bands = bands
        self.calibration = calibration
        self._chat_template = chat_template
        self.engine: EmbeddedEngine | None = None
        self.intake: RequestIntake | None = None

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def model_names(self) -> list[str]:
        return [self._served_name]

    async def start(self) -> None:
        engine = await asyncio.to_thread(self._build_engine)
        self.intake = RequestIntake(engine.loaded, self._config)
        self.engine = engine
        engine.start()
        log.info("embedded engine ready: %s (%d layers)", self._served_name, self.engine.loaded.num_layers)

    def _build_engine(self) -> EmbeddedEngine:
        from monitors.model_profile import profile_model, uncalibrated

        loaded = load_model(provision(self._model), self._served_name, self._chat_template)
        if self.calibration is None and self._config.capture:
            self.calibration = uncalibrated(self._served_name, profile_model(loaded.model, loaded.tokenizer))
            log.warning(
                "%s has no calibration: serving it uncalibrated (monitors on its own bands %s, verdicts "
                "'uncalibrated', block and rescue do not act); run `sinkwatch calibrate` for it",
                self._served_name,
                format_bands(self.calibration.bands),
            )
        calibration = self.calibration
        bands = self._bands or (calibration.bands if calibration else default_bands(loaded.num_layers))
        options = calibration.extractor_options() if calibration else None
        return EmbeddedEngine(loaded, self._config, bands, options)

    async def close(self) -> None:
        if self.intake is not None:
            self.intake.close()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.shutdown)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        max_queue = self._config.max_queue
        if request.n > max_queue:  # its choices could never all be queued: a 429 would never pass
            raise UnsupportedParameter(
                f"n={request.n} is more choices than this server queues at once ({max_queue})", param="n"
            )
        request, prompt_ids = await self.intake.prepare(request)
        events = self.engine.submit(request, prompt_ids)
        try:
            yield StartEvent(prompt_tokens=len(prompt_ids))
            async for event in events:
                yield event
        finally:
            await events.aclose()
