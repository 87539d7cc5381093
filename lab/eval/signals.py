"""Per-token trajectories of every signal for one corpus generation, replayed offline.

Hidden-state features go through the same :class:`monitors.features.FeatureExtractor` the engine runs
while serving, fed with the teacher-forced states of the corpus; a :class:`Sampling` coarse-grains what
it sees (fewer layers, every k-th token, a random projection of the width) for the scale-loss study.
Offline-only levers (path length over every layer, logit-lens entropy drop, attention entropy) and the
text-level baselines come from the same arrays. Window statistics are NaN until their window is full.
"""

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lab.eval.labels import repetition_trajectory
from monitors.bands import LayerBand, captured_layers
from monitors.features import FeatureExtractor
from monitors.probe import LinearProbe
from monitors.text import periodicity_trajectory

__all__ = [
    "Reference",
    "Sampling",
    "baseline_trajectories",
    "hidden_state_trajectories",
    "hold",
    "offline_trajectories",
    "zlib_trajectory",
]

ZLIB_WINDOW = 64


@dataclass(frozen=True)
class Sampling:
    """What the monitor observes: these bands' layers, every ``stride``-th token, width projected to
    ``projection`` (None: full width); the window spans ``window`` tokens (``window // stride`` samples,
    at least 4). Between samples every hidden-state feature holds its last value."""

    bands: tuple[LayerBand, ...]
    stride: int = 1
    projection: int | None = None
    window: int = 32
    seed: int = 0

    @property
    def window_samples(self) -> int:
        return max(4, self.window // self.stride)

    def projection_matrix(self, width: int) -> np.ndarray | None:
        """A seeded Gaussian random projection ``[width, projection]`` scaled to keep norms on average."""
        if self.projection is None or self.projection >= width:
            return None
        rng = np.random.default_rng(self.seed)
        return rng.standard_normal((width, self.projection)) / np.sqrt(self.projection)


@dataclass
class Reference:
    """What calibration knows about the model's normal states; with ``projection`` (``[d, m]``), mean states
    and probe live in the projected space and states are projected before the extractor sees them."""

    mean_states: dict[int, np.ndarray] = field(default_factory=dict)
    outlier_dims: dict[int, list[int]] = field(default_factory=dict)
    probe: LinearProbe | None = None
    projection: np.ndarray | None = None


def hidden_state_trajectories(
    states: np.ndarray, entropy: np.ndarray, token_ids: Sequence[int], sampling: Sampling, reference: Reference
) -> dict[str, np.ndarray]:
    """Replay the states ``[T, all layers, d]`` through a feature extractor as ``sampling`` dictates."""
    layers = captured_layers(sampling.bands)
    x = states[:, layers].astype(np.float64)
    if reference.projection is not None:
        x = x @ reference.projection
    extractor = FeatureExtractor(
        sampling.bands,
        sampling.window_samples,
        reference.mean_states or None,
        outlier_dims=reference.outlier_dims,
        probe=reference.probe,
    )
    total = len(token_ids)
    out: dict[str, np.ndarray] = {}
    last: dict[str, float] = {}
    for t in range(total):
        if t % sampling.stride == 0:
            features = extractor.push(x[t], float(entropy[t]), int(token_ids[t]))
            full = features.window >= extractor.window
            last = {k: v for k, v in features.values.items() if full or "." not in k}
        for name, value in last.items():
            out.setdefault(name, np.full(total, np.nan))[t] = value
    out["entropy"] = np.asarray(entropy, dtype=np.float64)
    return out


def hold(values: np.ndarray, stride: int) -> np.ndarray:
    """Sample-and-hold: each token sees the value of the latest sampled token (every ``stride``-th)."""
    return values[(np.arange(len(values)) // stride) * stride]


def zlib_trajectory(token_ids: Sequence[int], window: int = ZLIB_WINDOW) -> np.ndarray:
    """Compressed size / raw size of the last ``window`` tokens' ids (2 bytes each): low means repetitive."""
    raw = np.asarray(token_ids, dtype=">u4").astype(">u2").tobytes()
    out = np.empty(len(token_ids))
    for t in range(len(token_ids)):
        chunk = raw[2 * max(0, t + 1 - window) : 2 * (t + 1)]
        out[t] = len(zlib.compress(chunk, 9)) / len(chunk)
    return out


def baseline_trajectories(token_ids: Sequence[int], entropy: np.ndarray) -> dict[str, np.ndarray]:
    """The text-level signals: periodicity (served), and the baselines n-gram repetition, zlib ratio, output
    length (and token entropy)."""
    return {
        "text.periodicity": periodicity_trajectory(list(token_ids)),
        "text.repetition": repetition_trajectory(list(token_ids)),
        "text.zlib": zlib_trajectory(token_ids),
        "text.length": np.arange(1, len(token_ids) + 1, dtype=np.float64),
        "entropy": np.asarray(entropy, dtype=np.float64),
    }


def offline_trajectories(arrays: Mapping[str, np.ndarray], entropy: np.ndarray) -> dict[str, np.ndarray]:
    """Levers that need more than the served capture: exact path length, logit lens, attention entropy."""
    states = arrays["states"].astype(np.float32)
    steps = np.linalg.norm(np.diff(states, axis=1), axis=2).sum(axis=1)
    out = {"offline.path_all": steps / np.maximum(np.linalg.norm(states[:, -1], axis=1), 1e-6)}
    for i, layer in enumerate(arrays.get("lens_layers", [])[:-1]):
        out[f"lens.drop{int(layer)}"] = arrays["lens_entropy"][:, i] - entropy
    if "lens_topk" in arrays:
        for i, layer in enumerate(arrays["lens_layers"][:-1]):
            out[f"lens.topk_drop{int(layer)}"] = arrays["lens_topk"][:, i] - arrays["lens_topk"][:, -1]
    if "attn_entropy" in arrays:
        attn = arrays["attn_entropy"]
        thirds = np.array_split(np.arange(attn.shape[1]), 3)
        for name, rows in zip(("early", "middle", "late"), thirds, strict=True):
            out[f"attn.{name}"] = attn[:, rows].mean(axis=1)
    return out
