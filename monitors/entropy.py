"""Next-token entropy of raw logits, as every engine (embedded, reader, vLLM plugin) computes it."""

import torch


def next_token_entropies(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) per row, before any sampling adjustment.

    ``H = log Σe - Σ(e·z)/Σe`` with ``z = logits - max`` and ``e = exp(z)``: one exponential per logit and no
    log-softmax tensor, several times faster on CPU for a 49k vocabulary. ``-inf`` logits (masked tokens)
    contribute 0 instead of NaN.
    """
    z = logits.float()
    z = (z - z.amax(dim=-1, keepdim=True)).clamp_(min=torch.finfo(torch.float32).min)
    e = z.exp()
    total = e.sum(dim=-1)
    return total.log() - (e * z).sum(dim=-1) / total
