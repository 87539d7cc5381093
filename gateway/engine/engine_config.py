"""The embedded engine's settings (apart from the engine, which brings torch)."""

from dataclasses import dataclass

__all__ = ["EngineConfig"]


@dataclass(frozen=True)
class EngineConfig:
    """Capacity and capture settings of the embedded engine."""

    max_batch: int = 8
    max_queue: int = 64
    max_model_len: int = 2048
    capture: bool = True
    window: int = 32
