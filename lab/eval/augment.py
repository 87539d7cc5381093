"""Offline-only levers that need a second, slower pass over the corpus: attention entropy and a cheap logit lens.

The engine attends with fused SDPA kernels, which never materialise attention weights, so attention
entropy cannot come from serving for free. Here each generation is teacher-forced once more with eager
attention (``output_attentions``) and, for every generated position and layer, the entropy of the
attention row (averaged over heads, divided by ``log(number of keys)`` so that it is comparable across
positions) is stored. The same pass computes a *top-k logit lens*: the entropy of the lens distribution
restricted to the final layer's ``k`` most likely tokens, which costs ``k × d`` per layer instead of
``vocab × d`` (the corpus keeps the full-vocabulary lens entropies to measure what the shortcut loses).
Results go beside the corpus arrays as ``<key>.extra.npz``.
"""

import numpy as np
import torch

from gateway.engine.loader import LoadedModel
from lab.eval.corpus import CORPUS_VERSION, CorpusEntry, corpus_dir, read_manifest

__all__ = ["augment_corpus"]

TOP_K = 64


def extra_path(entry: CorpusEntry, name: str = CORPUS_VERSION):
    """Where a generation's extra arrays are cached."""
    return corpus_dir(name) / "arrays" / f"{entry.key}.extra.npz"


@torch.inference_mode()
def extra_arrays(loaded: LoadedModel, entry: CorpusEntry, lens_layers: list[int]) -> dict[str, np.ndarray]:
    """Attention-row entropy ``[T, layers]`` and top-k lens entropy ``[T, len(lens_layers)]``."""
    ids = entry.prompt_ids + entry.output_ids[:-1]
    first = len(entry.prompt_ids) - 1
    out = loaded.model(input_ids=torch.tensor([ids]), output_attentions=True, output_hidden_states=True)
    keys = torch.arange(first + 1, len(ids) + 1, dtype=torch.float32)
    attn = []
    for weights in out.attentions:
        rows = weights[0, :, first:].float()
        entropy = -(rows * torch.log(rows.clamp_min(1e-12))).sum(-1).mean(0)
        attn.append(entropy / torch.log(keys.clamp_min(2.0)))
    top = out.logits[0, first:].topk(TOP_K, dim=-1).indices
    head = loaded.model.lm_head.weight
    norm = loaded.model.model.norm
    lens = []
    for layer in lens_layers:
        hidden = norm(out.hidden_states[layer + 1][0, first:])
        logits = torch.einsum("td,tkd->tk", hidden, head[top])
        log_p = torch.log_softmax(logits.float(), dim=-1)
        lens.append(-(log_p.exp() * log_p).sum(-1))
    return {"attn_entropy": torch.stack(attn, 1).numpy(), "lens_topk": torch.stack(lens, 1).numpy()}


def augment_corpus(
    loaded: LoadedModel, name: str = CORPUS_VERSION, split: str | None = None, limit: int | None = None
) -> int:
    """Compute the extra arrays of the generations that lack them (with ``limit``, of an evenly spread
    subset of that many generations); returns how many were computed."""
    from lab.eval.corpus import load_arrays

    entries = [e for e in read_manifest(name) if e.output_ids and (split is None or e.split == split)]
    if limit:
        entries = entries[:: max(1, len(entries) // limit)][:limit]
    loaded.model.set_attn_implementation("eager")
    done = 0
    try:
        for entry in entries:
            if extra_path(entry, name).is_file():
                continue
            lens_layers = [int(x) for x in load_arrays(entry, name)["lens_layers"]]
            target = extra_path(entry, name)
            partial = target.with_suffix(".partial")
            with partial.open("wb") as out:  # an interrupted pass never leaves a truncated file behind
                np.savez(out, **extra_arrays(loaded, entry, lens_layers))
            partial.replace(target)
            done += 1
    finally:
        loaded.model.set_attn_implementation("sdpa")
    return done
