"""What the tap captures from one engine step, as it travels from the model runner to the reducer."""

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitors.vllm_plugin.wire import RequestTag

__all__ = ["CapturedStep"]


@dataclass
class CapturedStep:
    """What one engine step sampled for the monitored requests: one row per request.

    ``states`` is ``[rows, layers, d]`` (the residual stream behind each sampled token at the captured
    layers, float32); ``entropies`` the next-token entropy of each row, or None when ``logits`` (a torch
    tensor) holds the rows' raw logits to compute it from; ``ended`` lists engine request ids whose
    extractors can be dropped.
    """

    engine_ids: list[str]
    tags: list[RequestTag]
    token_ids: list[int]
    states: np.ndarray
    entropies: np.ndarray | None
    ended: list[str] = field(default_factory=list)
    logits: Any = None

    def row_entropies(self) -> np.ndarray:
        """Each row's next-token entropy, computed here from the logits when the runner left it (the logits are
        the tap's own copy of the rows, used as scratch)."""
        if self.entropies is not None:
            return self.entropies
        if self.logits is None:
            raise ValueError("a captured step needs its entropies or its logits")
        from monitors.entropy import next_token_entropies  # torch: only where logits come from, not the reducer

        return next_token_entropies(self.logits, overwrite=True).numpy()
