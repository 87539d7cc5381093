"""The embedded backend: provisions the packaged model and serves it from the in-process engine."""

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

from gateway.engine.engine import EmbeddedEngine
from gateway.engine.engine_config import EngineConfig
from gateway.engine.loader import load_model
from gateway.engine.provision import provision
from gateway.generation import ChatPrompt, GenerationEvent, GenerationRequest, StartEvent
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

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def model_names(self) -> list[str]:
        return [self._served_name]

    async def start(self) -> None:
        self.engine = await asyncio.to_thread(self._build_engine)
        self.engine.start()
        log.info("embedded engine ready: %s (%d layers)", self._served_name, self.engine.loaded.num_layers)

    def _build_engine(self) -> EmbeddedEngine:
        from monitors.bands import default_bands

        loaded = load_model(provision(self._model), self._served_name)
        bands = self._bands or default_bands(loaded.num_layers)
        return EmbeddedEngine(loaded, self._config, bands, self._extractor_options)

    async def close(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.shutdown)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        engine = self.engine
        prompt_ids = engine.encode_prompt(request)
        sampling = request.sampling
        if sampling.max_tokens is None:
            request = replace(request, sampling=replace(sampling, max_tokens=engine.context_left(len(prompt_ids))))
        prompt_param = "messages" if isinstance(request.prompt, ChatPrompt) else "prompt"
        engine.check_fits(len(prompt_ids), request.sampling.max_tokens, prompt_param, "max_tokens")
        events = engine.submit(request, prompt_ids)
        try:
            yield StartEvent(prompt_tokens=len(prompt_ids))
            async for event in events:
                yield event
        finally:
            await events.aclose()
