"""Per-row sampling over a batch of logits: penalties, logit bias, temperature, top-p, seeded draws."""

from collections.abc import Sequence

import torch

from gateway.generation import SamplingParams


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

    def draw(self, logits: torch.Tensor) -> int:
        """Pick the next token from one adjusted row."""
        p = self.params
        if p.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < p.top_p
            sorted_probs = torch.where(keep, sorted_probs, 0.0)
            return int(order[torch.multinomial(sorted_probs, 1, generator=self.generator)])
        return int(torch.multinomial(probs, 1, generator=self.generator))


def entropies(logits: torch.Tensor) -> torch.Tensor:
    """Next-token entropy (nats) of each row of raw logits, before any sampling adjustment."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def sample_batch(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> list[int]:
    """Sample one token per row; every row keeps its own parameters and generator."""
    tokens = []
    for row, sampler in zip(logits, samplers, strict=True):
        token = sampler.draw(sampler.adjust(row))
        sampler.record(token)
        tokens.append(token)
    return tokens
