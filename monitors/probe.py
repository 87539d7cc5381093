"""A linear probe on a few layers' residual states: a score for "a sink begins within the next tokens".

Trained offline (``sinkwatch calibrate``) on the served model's own generations, with labels from the
text-level detector applied to later tokens; its weights are small and travel in the calibration JSON.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LinearProbe", "fit_ridge", "train_probe"]

TRAIN_TOKEN_STRIDE = 2  # neighbouring tokens are nearly duplicates: every other one is enough to fit on


@dataclass(frozen=True)
class LinearProbe:
    """``score = w · ((x - mean) / scale) + bias`` over the concatenated states of ``layers`` (≈ the
    probability of the positive class, from a least-squares fit; only its ranking matters downstream)."""

    layers: tuple[int, ...]
    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    horizon: int = 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(weights / scale, mean, bias)`` folded for fast scoring: ``score = (x - mean) @ w' + bias``."""
        w = np.asarray(self.weights) / np.asarray(self.scale)
        return w, np.asarray(self.mean), np.asarray(self.bias)

    def score(self, states: np.ndarray) -> np.ndarray:
        """Scores for states ``[..., len(layers), d]`` (flattened over the last two axes)."""
        w, mean, bias = self.arrays()
        flat = np.asarray(states, dtype=np.float64).reshape(*np.shape(states)[:-2], -1)
        return (flat - mean) @ w + bias

    def to_dict(self) -> dict:
        """JSON-ready form (rounded: 4 significant digits are plenty for a linear probe)."""
        return {
            "layers": list(self.layers),
            "weights": [float(f"{v:.4g}") for v in self.weights],
            "bias": float(self.bias),
            "mean": [float(f"{v:.5g}") for v in self.mean],
            "scale": [float(f"{v:.5g}") for v in self.scale],
            "horizon": self.horizon,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "LinearProbe":
        """Inverse of :meth:`to_dict`."""
        return cls(
            layers=tuple(data["layers"]),
            weights=tuple(data["weights"]),
            bias=float(data["bias"]),
            mean=tuple(data["mean"]),
            scale=tuple(data["scale"]),
            horizon=int(data.get("horizon", 0)),
        )


def fit_ridge(x: np.ndarray, y: np.ndarray, l2: float, sample_weight: np.ndarray | None = None) -> tuple:
    """Weighted ridge regression of 0/1 targets on standardised features, in closed form (one solve).

    A least-squares linear probe: its direction is Fisher's discriminant up to regularisation, at the cost
    of one ``p × p`` solve instead of a Newton iteration per step. Returns ``(weights, bias, mean, scale)``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    weight = weight / weight.sum()
    mean = weight @ x
    scale = np.sqrt(weight @ (x - mean) ** 2) + 1e-6
    z = ((x - mean) / scale).astype(np.float32)
    target = y - weight @ y
    gram = (z * weight[:, None].astype(np.float32)).T @ z
    w = np.linalg.solve(gram.astype(np.float64) + l2 * np.eye(z.shape[1]), z.T @ (weight * target))
    return w, float(weight @ y), mean, scale


def train_probe(
    states: Sequence[np.ndarray], labels: Sequence[np.ndarray], layers: Sequence[int], l2: float, horizon: int
) -> LinearProbe:
    """Fit a probe on per-token states ``[T, len(layers), d]`` and 0/1 labels ``[T]`` of many generations.

    Each generation weighs the same in total, so long generations do not dominate; every
    ``TRAIN_TOKEN_STRIDE``-th token is used.
    """
    x = np.concatenate([s[::TRAIN_TOKEN_STRIDE].reshape(len(s[::TRAIN_TOKEN_STRIDE]), -1) for s in states])
    y = np.concatenate([y[::TRAIN_TOKEN_STRIDE] for y in labels])
    weight = np.concatenate([np.full(len(s[::TRAIN_TOKEN_STRIDE]), 1.0 / len(s[::TRAIN_TOKEN_STRIDE])) for s in states])
    positive = y > 0.5
    if positive.any() and (~positive).any():  # balance the classes
        weight[positive] *= 0.5 / weight[positive].sum()
        weight[~positive] *= 0.5 / weight[~positive].sum()
    w, b, mean, scale = fit_ridge(x, y, l2, weight)
    return LinearProbe(tuple(layers), tuple(w.tolist()), b, tuple(mean.tolist()), tuple(scale.tolist()), horizon)
