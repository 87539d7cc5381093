"""The seam every backend implements: a request in, token and finish events out."""

from collections.abc import AsyncIterator
from typing import Protocol

from gateway.generation import GenerationEvent, GenerationRequest


class Backend(Protocol):
    """A source of generations. ``generate`` raises an ``OpenAIError`` for a request it cannot serve."""

    name: str

    @property
    def ready(self) -> bool:
        """True once the backend can serve requests."""

    def model_names(self) -> list[str]:
        """Names of the models served."""

    async def start(self) -> None:
        """Load or connect; called once before serving."""

    async def close(self) -> None:
        """Release everything; called once at shutdown."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream the generation's events: one ``StartEvent`` once the request is accepted, token events,
        then exactly one ``FinishEvent``."""
