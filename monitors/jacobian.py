"""Manifold stress: how anisotropic the Jacobian of a layer block, ∂h[l+k]/∂h[l], is at one token.

The exact Jacobian of a block at one position needs ``d`` vector-Jacobian products. The budgeted estimate
needs a handful: the largest singular value by power iteration (``iterations`` Jacobian-vector products,
by central differences, plus as many vector-Jacobian products) and ``‖J‖_F²`` by Hutchinson's estimator
(``probes`` vector-Jacobian products with Gaussian vectors). Its *stress* is ``σ_max / rms(σ)``: 1 for an
isotropic map, large when the block stretches a few directions and squeezes the rest. The minimum
singular value (hence the condition number) is not estimated: power iteration does not reach it cheaply.

``block`` is a batched function ``X[B, d] -> Y[B, d]`` whose rows are independent (the same block applied
to B copies of one token's state), see :func:`decoder_block` for a transformers decoder.
"""

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["decoder_block", "estimate_stress", "exact_jacobian", "exact_stress"]

Block = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Stress:
    """Largest singular value, RMS singular value and their ratio (exact or estimated)."""

    sigma_max: float
    sigma_rms: float

    @property
    def stress(self) -> float:
        return self.sigma_max / max(self.sigma_rms, 1e-12)


def _vjp(block: Block, h: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Rows ``Jᵀ u`` for each row ``u`` of ``vectors``, in one batched backward pass."""
    x = h.detach().expand(len(vectors), -1).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((block(x) * vectors).sum(), x)
    return grad


def _jvp(block: Block, h: torch.Tensor, vectors: torch.Tensor, relative_step: float = 1e-3) -> torch.Tensor:
    """Rows ``J v`` for each unit row ``v`` of ``vectors``, by central differences in one batched forward.

    (Fused attention kernels have no double backward, so the exact JVP-as-VJP-of-VJP trick fails on them;
    a central difference with a step of ``relative_step × ‖h‖`` is accurate to a few parts in 10⁴ here.)
    """
    step = relative_step * float(h.norm())
    with torch.no_grad():
        y = block(torch.cat([h + step * vectors, h - step * vectors]))
    return (y[: len(vectors)] - y[len(vectors) :]) / (2 * step)


def exact_jacobian(block: Block, h: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """The full ``d × d`` Jacobian at ``h`` (rows = output dimensions)."""
    d = h.shape[-1]
    eye = torch.eye(d, dtype=h.dtype)
    return torch.cat([_vjp(block, h, eye[i : i + chunk]) for i in range(0, d, chunk)])


def exact_stress(jacobian: torch.Tensor) -> tuple[Stress, float]:
    """Exact stress and condition number from a full Jacobian."""
    sigma = torch.linalg.svdvals(jacobian.double())
    stress = Stress(float(sigma[0]), float(sigma.pow(2).mean().sqrt()))
    return stress, float(sigma[0] / sigma[-1].clamp_min(1e-30))


def estimate_stress(block: Block, h: torch.Tensor, iterations: int = 5, probes: int = 8, seed: int = 0) -> Stress:
    """Budgeted estimate: ``iterations`` power steps for σ_max, ``probes`` Hutchinson probes for ‖J‖_F."""
    generator = torch.Generator().manual_seed(seed)
    d = h.shape[-1]
    u = torch.randn(probes, d, generator=generator, dtype=h.dtype)
    frob_sq = float(_vjp(block, h, u).pow(2).sum(dim=1).mean())
    v = torch.randn(1, d, generator=generator, dtype=h.dtype)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(iterations):
        jv = _jvp(block, h, v)
        sigma = float(jv.norm())
        w = _vjp(block, h, jv / max(sigma, 1e-30))
        v = w / w.norm().clamp_min(1e-30)
    return Stress(sigma, math.sqrt(frob_sq / d))


@torch.no_grad()
def _prefix_cache(model, ids: list[int], position: int):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([ids[:position]]), cache=cache, use_cache=True)
    return cache


def decoder_block(model, ids: list[int], position: int, start: int, stop: int) -> tuple[Block, torch.Tensor]:
    """The map from the residual state entering layer ``start`` to the one leaving layer ``stop - 1``, at
    token ``position`` of ``ids`` (earlier tokens fixed, attended through their cached keys and values),
    and the actual state entering layer ``start`` there.

    Works for transformers decoders with rotary embeddings (Llama family: SmolLM2).
    """
    inner = model.model
    cache = _prefix_cache(model, ids, position) if position else None
    positions = torch.tensor([[position]])
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids[: position + 1]]), output_hidden_states=True).hidden_states[start][
            0, -1
        ]

    def block(x: torch.Tensor) -> torch.Tensor:
        batch = len(x)
        layer_cache = _expanded_cache(cache, batch) if cache is not None else None
        states = x[:, None, :]
        embeddings = inner.rotary_emb(states, position_ids=positions.expand(batch, -1))
        for layer in inner.layers[start:stop]:
            states = layer(
                states,
                attention_mask=None,
                position_embeddings=embeddings,
                position_ids=positions.expand(batch, -1),
                cache=layer_cache,
                use_cache=layer_cache is not None,
            )
            states = states[0] if isinstance(states, tuple) else states
        return states[:, 0, :]

    return block, hidden


def _expanded_cache(cache, batch: int):
    """A copy of the prefix cache whose tensors are broadcast to ``batch`` rows (the original is untouched)."""
    fresh = copy.copy(cache)
    fresh.layers = []
    for layer in cache.layers:
        clone = copy.copy(layer)
        clone.keys = layer.keys.expand(batch, -1, -1, -1)
        clone.values = layer.values.expand(batch, -1, -1, -1)
        fresh.layers.append(clone)
    return fresh
