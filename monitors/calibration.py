"""Calibrated thresholds for one served model, stored as JSON and shipped with the package."""

import json
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from monitors.bands import LayerBand

Direction = Literal["low", "high"]
Family = Literal["sink", "rank"]


@dataclass(frozen=True)
class SignalThreshold:
    """A feature, the side on which it is abnormal, and the calibrated value that marks abnormal."""

    name: str
    direction: Direction
    threshold: float
    family: Family

    def crossed(self, value: float) -> bool:
        """True when ``value`` is on the abnormal side of the threshold."""
        return value < self.threshold if self.direction == "low" else value > self.threshold


@dataclass(frozen=True)
class Calibration:
    """Thresholds for one model, set on normal traffic for a target false-positive rate per generation."""

    model: str
    window: int
    bands: tuple[LayerBand, ...]
    ewma_span: int
    persistence: int
    min_agreeing: int
    target_fpr: float
    signals: tuple[SignalThreshold, ...]
    rank_floors: dict[str, float]
    mean_states: dict[int, list[float]] = field(default_factory=dict)
    n_generations: int = 0
    created: str = ""

    def mean_state_arrays(self) -> dict[int, np.ndarray]:
        """The model's mean residual state per captured layer, as arrays."""
        return {layer: np.asarray(v, dtype=np.float64) for layer, v in self.mean_states.items()}

    def to_json(self) -> str:
        """Serialise to the JSON stored on disk."""
        data = asdict(self)
        data["bands"] = {b.name: list(b.layers) for b in self.bands}
        data["mean_states"] = {str(k): v for k, v in self.mean_states.items()}
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Calibration":
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        data["bands"] = tuple(LayerBand(name, tuple(layers)) for name, layers in data["bands"].items())
        data["signals"] = tuple(SignalThreshold(**s) for s in data["signals"])
        data["mean_states"] = {int(k): v for k, v in data.get("mean_states", {}).items()}
        return cls(**data)


def calibration_slug(model: str) -> str:
    """File-name form of a model name: ``SmolLM2-135M-Instruct`` -> ``smollm2-135m-instruct``."""
    return re.sub(r"[^a-z0-9.]+", "-", model.lower()).strip("-")


def shipped_calibration_path(model: str) -> Path:
    """Where the calibration shipped with the package for ``model`` lives."""
    return Path(str(resources.files("monitors") / "calibrations" / f"{calibration_slug(model)}.json"))


def load_calibration(model_or_path: str | Path) -> Calibration:
    """Load a calibration from a file path, or the one shipped for a model name."""
    path = Path(model_or_path)
    if not path.is_file():
        path = shipped_calibration_path(str(model_or_path))
    if not path.is_file():
        raise FileNotFoundError(f"no calibration for {model_or_path!s}; run `sinkwatch calibrate` for it")
    return Calibration.from_json(path.read_text())


def _persistent_extreme(trajectory: np.ndarray, direction: Direction, persistence: int) -> float:
    """The most abnormal value the trajectory holds for ``persistence`` consecutive tokens."""
    if len(trajectory) < persistence:
        return float("nan")
    windows = np.lib.stride_tricks.sliding_window_view(trajectory, persistence)
    return float(windows.max(axis=1).min()) if direction == "low" else float(windows.min(axis=1).max())


def ewma(values: np.ndarray, span: int) -> np.ndarray:
    """Exponentially weighted moving average with ``alpha = 2 / (span + 1)``, seeded with the first value."""
    alpha = 2.0 / (span + 1)
    out = np.empty(len(values))
    level = values[0] if len(values) else 0.0
    for i, value in enumerate(values):
        level = value if i == 0 else alpha * value + (1 - alpha) * level
        out[i] = level
    return out


def fit_threshold(
    trajectories: list[np.ndarray], direction: Direction, span: int, persistence: int, fpr: float
) -> float:
    """The threshold that at most a fraction ``fpr`` of these (normal) generations cross for ``persistence``
    consecutive smoothed tokens."""
    extremes = np.array([_persistent_extreme(ewma(t, span), direction, persistence) for t in trajectories if len(t)])
    extremes = extremes[np.isfinite(extremes)]
    if not len(extremes):
        raise ValueError("no trajectory is long enough to calibrate on")
    return float(np.quantile(extremes, fpr if direction == "low" else 1 - fpr))
