"""The embedded engine's settings (apart from the engine, which brings torch)."""

from dataclasses import dataclass

__all__ = ["EngineConfig"]


@dataclass(frozen=True)
class EngineConfig:
    """Capacity and capture settings of the embedded engine."""

    max_batch: int = 8
    max_queue: int = 64
    max_model_len: int = 2048
    default_max_tokens: int = 1024  # completion limit of a request that names none (0: the context left)
    max_tokens_limit: int = 0  # largest completion limit a request may name (0: only the context bounds it)
    capture: bool = True
    window: int = 32
