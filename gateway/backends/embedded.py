"""The embedded backend: provisions the packaged model and serves it from the in-process engine."""

import asyncio
import logging
from collections.abc import AsyncIterator

from gateway.engine.engine import EmbeddedEngine
from gateway.engine.engine_config import EngineConfig
from gateway.engine.intake import RequestIntake
from gateway.engine.loader import load_model
from gateway.engine.provision import provision
from gateway.generation import GenerationEvent, GenerationRequest, StartEvent
from monitors.bands import LayerBand

__all__ = ["EmbeddedBackend"]

log = logging.getLogger(__name__)


class EmbeddedBackend:
    """Runs ``model`` in this process; ``ready`` once the weights are loaded and the engine runs."""

    name = "embedded"

    def __init__(
        self,
        model: str,
        served_name: str,
        config: EngineConfig,
        bands: tuple[LayerBand, ...] | None,
        extractor_options: dict | None = None,
    ) -> None:
        self._model = model
        self._served_name = served_name
        self._config = config
        self._bands = bands
        self._extractor_options = extractor_options
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
        from monitors.bands import default_bands

        loaded = load_model(provision(self._model), self._served_name)
        bands = self._bands or default_bands(loaded.num_layers)
        return EmbeddedEngine(loaded, self._config, bands, self._extractor_options)

    async def close(self) -> None:
        if self.intake is not None:
            self.intake.close()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.shutdown)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        request, prompt_ids = await self.intake.prepare(request)
        events = self.engine.submit(request, prompt_ids)
        try:
            yield StartEvent(prompt_tokens=len(prompt_ids))
            async for event in events:
                yield event
        finally:
            await events.aclose()
