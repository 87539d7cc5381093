"""Named capture points on a torch model's decoder layers, attached and removed as a unit."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["ResidualCapture"]


class ResidualCapture:
    """Forward hooks that keep each chosen layer's residual-stream output at the last position.

    After a forward pass, :meth:`take` returns ``[batch, len(layer_indices), d]``: the states behind the
    next token of every sequence in the batch (``[batch, tokens, layers, d]`` with ``all_positions``, for
    teacher-forced passes). Hooks exist only inside :meth:`attached`.
    """

    def __init__(
        self, decoder_layers: Sequence[nn.Module], layer_indices: Sequence[int], all_positions: bool = False
    ) -> None:
        self.layer_indices = tuple(layer_indices)
        self._all_positions = all_positions
        self._modules = [decoder_layers[i] for i in self.layer_indices]
        self._latest: list[torch.Tensor | None] = [None] * len(self._modules)

    def _hook(self, slot: int):
        def keep_last_position(_module: nn.Module, _inputs: tuple, output) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            self._latest[slot] = (hidden if self._all_positions else hidden[:, -1, :]).detach()

        return keep_last_position

    @contextmanager
    def attached(self) -> Iterator["ResidualCapture"]:
        """Register the hooks for the duration of the block; always remove them."""
        handles = [module.register_forward_hook(self._hook(i)) for i, module in enumerate(self._modules)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._latest = [None] * len(self._modules)

    def take(self) -> torch.Tensor:
        """States from the last forward pass, float32, layers on the axis after batch (and tokens)."""
        if any(t is None for t in self._latest):
            raise RuntimeError("no forward pass ran with the capture attached")
        stacked = torch.stack(self._latest, dim=-2).float()
        self._latest = [None] * len(self._modules)
        return stacked
