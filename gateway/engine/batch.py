"""The running batch's KV cache: left-padded rows that join after their own prefill and leave at will."""

import torch
from torch.nn import functional
from transformers import DynamicCache

__all__ = ["BatchCache"]


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad the sequence axis (-2 of ``[B, heads, L, head_dim]``) on the left with zeros."""
    return functional.pad(t, (0, 0, width, 0)) if width else t


class BatchCache:
    """A ``DynamicCache`` whose rows are sequences of different lengths, aligned right.

    ``attention_mask`` marks real positions (1) and left padding (0); ``positions`` is each row's next
    position id. Joining pads the shorter side; leaving selects rows and trims all-padding columns.
    """

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.cache: DynamicCache | None = None
        self.attention_mask = torch.zeros(0, 0, dtype=torch.long)
        self.positions = torch.zeros(0, 1, dtype=torch.long)

    @property
    def size(self) -> int:
        """Number of rows."""
        return self.attention_mask.shape[0]

    @property
    def length(self) -> int:
        """Number of cache columns, padding included."""
        return self.attention_mask.shape[1]

    def join(self, cache: DynamicCache, prompt_length: int) -> None:
        """Append a freshly prefilled single-sequence cache as the last row."""
        if self.cache is None:
            self.cache = cache
            self.attention_mask = torch.ones(1, prompt_length, dtype=torch.long)
            self.positions = torch.tensor([[prompt_length]])
            return
        width = max(self.length, prompt_length)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat(
                [_left_pad(mine.keys, width - self.length), _left_pad(theirs.keys, width - prompt_length)]
            )
            mine.values = torch.cat(
                [_left_pad(mine.values, width - self.length), _left_pad(theirs.values, width - prompt_length)]
            )
        new_row = torch.ones(1, prompt_length, dtype=torch.long)
        self.attention_mask = torch.cat(
            [
                functional.pad(self.attention_mask, (width - self.length, 0)),
                functional.pad(new_row, (width - prompt_length, 0)),
            ]
        )
        self.positions = torch.cat([self.positions, torch.tensor([[prompt_length]])])

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order); drop the leading columns that became all padding."""
        if not rows:
            self._clear()
            return
        index = torch.tensor(rows)
        mask = self.attention_mask.index_select(0, index)
        first_used = int(torch.nonzero(mask.any(dim=0))[0, 0])
        self.attention_mask = mask[:, first_used:]
        self.positions = self.positions.index_select(0, index)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first_used:]
            layer.values = layer.values.index_select(0, index)[:, :, first_used:]

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Extend the mask by one real column; return (attention_mask, position_ids) for a decode step."""
        self.attention_mask = functional.pad(self.attention_mask, (0, 1), value=1)
        positions = self.positions
        self.positions = positions + 1
        return self.attention_mask, positions
