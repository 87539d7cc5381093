"""Per-row sampling over a batch of logits: penalties, logit bias, temperature, top-p, seeded draws."""

from collections.abc import Sequence

import torch

from gateway.errors import InvalidRequest
from gateway.generation import SamplingParams

__all__ = ["RowSampler", "sample_batch"]


class RowSampler:
    """The sampling state of one sequence: its parameters, seeded generator and token history."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int], vocab_size: int) -> None:
        self.params = params
        self.generator = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)
        self._needs_history = params.presence_penalty or params.frequency_penalty or params.repetition_penalty != 1
        self.output_counts = torch.zeros(vocab_size) if self._needs_history else None
        self.seen = torch.zeros(vocab_size, dtype=torch.bool) if params.repetition_penalty != 1 else None
        if self.seen is not None and prompt_ids:
            self.seen[torch.tensor(list(prompt_ids))] = True
        self.bias = None
        if params.logit_bias:
            if max(params.logit_bias) >= vocab_size or min(params.logit_bias) < 0:
                raise InvalidRequest("logit_bias names token ids outside the vocabulary", param="logit_bias")
            self.bias = torch.zeros(vocab_size)
            ids = torch.tensor(list(params.logit_bias))
            self.bias[ids] = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32)

    def record(self, token_id: int) -> None:
        """Remember a sampled token for the penalties."""
        if self.output_counts is not None:
            self.output_counts[token_id] += 1
        if self.seen is not None:
            self.seen[token_id] = True

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply logit bias and the repetition, presence and frequency penalties to one row."""
        p = self.params
        if self.bias is not None:
            logits = logits + self.bias
        if self.seen is not None:
            penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
            logits = torch.where(self.seen, penalised, logits)
        if self.output_counts is not None and (p.presence_penalty or p.frequency_penalty):
            logits = logits - p.frequency_penalty * self.output_counts
            logits = logits - p.presence_penalty * (self.output_counts > 0).float()
        return logits

    def uniform(self) -> float:
        """One draw in [0, 1) from this sequence's own generator (seeded) or the global one."""
        return float(torch.rand(1, generator=self.generator))


# Candidate counts tried in turn before sorting the whole vocabulary for top-p.
_NUCLEUS_CANDIDATES = (1024, 8192)


def _inverse_cdf(probs: torch.Tensor, u: float) -> int:
    """Index drawn from unnormalised ``probs`` with the uniform ``u`` (cheaper than multinomial)."""
    cdf = torch.cumsum(probs, dim=-1)
    return min(int(torch.searchsorted(cdf, u * cdf[-1], right=True)), probs.shape[-1] - 1)


def _nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest set of tokens whose probability reaches ``top_p``: (probabilities, token ids).

    Looks among the top candidates first and sorts the whole vocabulary only when they do not reach
    ``top_p``; either way the set is exact.
    """
    total = float(probs.sum())
    candidates = None
    for k in _NUCLEUS_CANDIDATES:
        if k >= probs.shape[-1]:
            break
        values, ids = torch.topk(probs, k)
        if float(values.sum()) >= top_p * total:
            candidates = values, ids
            break
    values, ids = candidates or torch.sort(probs, descending=True)
    keep = torch.cumsum(values, dim=-1) - values < top_p * total
    return values[keep], ids[keep]


def sample_batch(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> list[int]:
    """Sample one token per row; every row keeps its own parameters and generator."""
    rows = torch.stack([sampler.adjust(row) for row, sampler in zip(logits, samplers, strict=True)])
    temperatures = torch.tensor([s.params.temperature or 1.0 for s in samplers]).unsqueeze(1)
    probs = torch.softmax(rows / temperatures, dim=-1)
    greedy = rows.argmax(dim=-1).tolist()
    tokens = []
    for i, sampler in enumerate(samplers):
        params = sampler.params
        if params.temperature == 0:
            token = greedy[i]
        elif params.top_p < 1.0:
            values, ids = _nucleus(probs[i], params.top_p)
            token = int(ids[_inverse_cdf(values, sampler.uniform())])
        else:
            token = _inverse_cdf(probs[i], sampler.uniform())
        sampler.record(token)
        tokens.append(token)
    return tokens
