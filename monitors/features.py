"""Per-token features from captured hidden states, over a sliding window of the generation.

One ``FeatureExtractor`` per generation. It keeps, for every captured layer, a ring of the last
``window`` residual-stream states and their Gram matrix, updated with one dot product per layer per
token, so each step costs O(layers × window × d) plus O(layers × window²).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from monitors.bands import LayerBand, captured_layers

_EPS = 1e-12


@dataclass(slots=True)
class StepFeatures:
    """What the monitors know about one generated token: flat ``name -> value`` features.

    Names are ``entropy`` and ``<band>.<metric>`` (``late.pr``, ``middle.cosine``...). ``window`` is how many
    tokens the window statistics cover (they are only comparable to calibration once it is full).
    """

    index: int
    token_id: int
    window: int
    values: dict[str, float] = field(default_factory=dict)

    def to_wire(self) -> dict:
        """A JSON-ready form, for transports between processes."""
        return {"i": self.index, "t": self.token_id, "w": self.window, "v": self.values}

    @classmethod
    def from_wire(cls, data: Mapping) -> "StepFeatures":
        """Inverse of :meth:`to_wire`."""
        return cls(index=int(data["i"]), token_id=int(data["t"]), window=int(data["w"]), values=dict(data["v"]))


def next_token_entropy(logits: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of softmax(logits) along the last axis."""
    z = logits - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1, keepdims=True))
    log_p = z - log_norm
    return -(np.exp(log_p) * log_p).sum(axis=-1)


class FeatureExtractor:
    """Turns each generated token's captured states into :class:`StepFeatures` for one generation."""

    def __init__(
        self,
        bands: Sequence[LayerBand],
        window: int = 32,
        mean_states: Mapping[int, np.ndarray] | None = None,
    ) -> None:
        if window < 2:
            raise ValueError("window must hold at least 2 tokens")
        self.bands = tuple(bands)
        self.layers = captured_layers(self.bands)
        self.window = window
        self._row_of_layer = {layer: i for i, layer in enumerate(self.layers)}
        self._band_rows = {b.name: [self._row_of_layer[layer] for layer in b.layers] for b in self.bands}
        self._mean_dirs = self._mean_directions(mean_states)
        self._ring: np.ndarray | None = None
        self._gram = np.zeros((len(self.layers), window, window))
        self._count = 0

    def _mean_directions(self, mean_states: Mapping[int, np.ndarray] | None) -> np.ndarray | None:
        if not mean_states or any(layer not in mean_states for layer in self.layers):
            return None
        means = np.stack([np.asarray(mean_states[layer], dtype=np.float64) for layer in self.layers])
        return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), _EPS)

    def push(self, states: np.ndarray, entropy: float, token_id: int) -> StepFeatures:
        """Add the states (``[len(self.layers), d]``, in ``self.layers`` order) behind one generated token."""
        x = np.asarray(states, dtype=np.float64)
        if self._ring is None:
            self._ring = np.zeros((len(self.layers), self.window, x.shape[-1]))
        slot = self._count % self.window
        previous = (self._count - 1) % self.window
        self._ring[:, slot] = x
        dots = np.einsum("lwd,ld->lw", self._ring, x)
        self._gram[:, slot, :] = dots
        self._gram[:, :, slot] = dots
        self._count += 1
        filled = min(self._count, self.window)

        norms = np.sqrt(np.maximum(np.diagonal(self._gram, axis1=1, axis2=2)[:, :filled], _EPS))
        raw = self._gram[:, :filled, :filled]
        unit = raw / (norms[:, :, None] * norms[:, None, :])
        per_layer = {
            "pr": _batched_pr(_batched_centre(unit)),
            "pr_raw": _batched_pr(_batched_centre(raw)),
            "eff_rank": _batched_effective_rank(_batched_centre(unit)),
        }
        if self._count > 1:
            per_layer["cosine"] = unit[:, slot, previous]
        if self._mean_dirs is not None:
            per_layer["drift"] = (self._mean_dirs * x).sum(axis=1) / np.maximum(np.linalg.norm(x, axis=1), _EPS)

        values = {"entropy": float(entropy)}
        for band, rows in self._band_rows.items():
            for metric, per_layer_values in per_layer.items():
                values[f"{band}.{metric}"] = float(np.mean(per_layer_values[rows]))
        return StepFeatures(index=self._count - 1, token_id=token_id, window=filled, values=values)


def _batched_centre(gram: np.ndarray) -> np.ndarray:
    row_means = gram.mean(axis=2, keepdims=True)
    return gram - row_means - np.swapaxes(row_means, 1, 2) + gram.mean(axis=(1, 2), keepdims=True)


def _batched_pr(centred: np.ndarray) -> np.ndarray:
    trace = np.trace(centred, axis1=1, axis2=2)
    frob_sq = np.sum(centred * centred, axis=(1, 2))
    return np.where(frob_sq > _EPS, trace * trace / np.maximum(frob_sq, _EPS), 0.0)


def _batched_effective_rank(centred: np.ndarray) -> np.ndarray:
    singular = np.sqrt(np.clip(np.linalg.eigvalsh(centred), 0.0, None))
    total = singular.sum(axis=1, keepdims=True)
    p = singular / np.maximum(total, _EPS)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, _EPS)), 0.0), axis=1)
    return np.where(total[:, 0] > _EPS, np.exp(entropy), 0.0)
