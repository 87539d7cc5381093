"""Per-row sampling: penalties, logit bias, temperature, top-p, seeded draws, safe for any accepted value.

Every row is sampled on its own, so that a failure in one request's step fails that request only. Values
the API accepts can still push logits out of float range (a repetition penalty of 1e-40 divides them by
it, a temperature of 1e-300 divides by that); rows are brought back to finite numbers before the
softmax, and the nucleus always keeps the most likely token, so no accepted value leaves nothing to draw.
"""

from collections.abc import Sequence

import torch

from gateway.errors import InvalidRequest
from gateway.generation import SamplingParams

__all__ = ["RowSampler"]

# As vLLM: a temperature below GREEDY_BELOW decodes greedily, one below MIN_TEMPERATURE is raised to it
# (dividing logits by less overflows float32 and the softmax yields NaN).
GREEDY_BELOW = 1e-5
MIN_TEMPERATURE = 1e-2
# Adjusted logits are clamped to +-LOGIT_BOUND: far beyond any real gap, small enough that dividing by
# MIN_TEMPERATURE stays finite in float32 (max about 3.4e38).
LOGIT_BOUND = 1e30


def effective_temperature(temperature: float) -> float:
    """The temperature the sampler divides by; 0 means greedy."""
    if temperature < GREEDY_BELOW:
        return 0.0
    return max(temperature, MIN_TEMPERATURE)


class RowSampler:
    """The sampling state of one sequence: its parameters, seeded generator and token history."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int], vocab_size: int) -> None:
        self.params = params
        self.temperature = effective_temperature(params.temperature)
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
                raise InvalidRequest(
                    f"logit_bias names token ids outside the vocabulary (0 to {vocab_size - 1})", param="logit_bias"
                )
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

    def sample(self, logits: torch.Tensor) -> int:
        """One token from this row's logits, recorded for the penalties."""
        row = finite(self.adjust(logits))
        if self.temperature == 0:
            token = int(row.argmax())
        else:
            probs = torch.softmax(row / self.temperature, dim=-1)
            if self.params.top_p < 1.0:
                values, ids = _nucleus(probs, self.params.top_p)
                token = int(ids[_inverse_cdf(values, self.uniform())])
            else:
                token = _inverse_cdf(probs, self.uniform())
        self.record(token)
        return token


def finite(row: torch.Tensor) -> torch.Tensor:
    """Logits with NaN and infinities replaced by +-``LOGIT_BOUND`` (NaN as the lowest), and clamped to it."""
    return torch.nan_to_num(row, nan=-LOGIT_BOUND, posinf=LOGIT_BOUND, neginf=-LOGIT_BOUND).clamp(
        -LOGIT_BOUND, LOGIT_BOUND
    )


# Candidate counts tried in turn before sorting the whole vocabulary for top-p.
_NUCLEUS_CANDIDATES = (1024, 8192)


def _inverse_cdf(probs: torch.Tensor, u: float) -> int:
    """Index drawn from unnormalised ``probs`` with the uniform ``u`` (cheaper than multinomial)."""
    cdf = torch.cumsum(probs, dim=-1)
    return min(int(torch.searchsorted(cdf, u * cdf[-1], right=True)), probs.shape[-1] - 1)


def _nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest set of tokens whose probability reaches ``top_p``: (probabilities, token ids).

    Looks among the top candidates first and sorts the whole vocabulary only when they do not reach
    ``top_p``; either way the set is exact. The most likely token is always in it, however small
    ``top_p`` (1e-300 is 0 in float32).
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
    keep[0] = True
    return values[keep], ids[keep]
