"""Calibrated thresholds for one served model, stored as JSON and shipped with the package."""

import json
import re
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from monitors.bands import LayerBand
from monitors.prefill import PrefillProbe
from monitors.probe import LinearProbe
from monitors.risk import RiskModel

__all__ = [
    "CUSUM_SLACK",
    "Calibration",
    "Direction",
    "Family",
    "SignalThreshold",
    "TargetUnit",
    "cusum",
    "ewma",
    "fit_threshold",
    "load_calibration",
    "persistent_extreme",
    "rank_overlay_path",
    "shipped_calibration_path",
    "tracked",
    "with_rank_overlay",
]

Direction = Literal["low", "high"]
Family = Literal["sink", "rank"]
Method = Literal["ewma", "cusum"]
# What ``Calibration.target_fpr`` counts: the share of healthy generations the collapse verdict may fire on,
# or its false alarms per 1,000 healthy tokens (the rate that holds as answers grow).
TargetUnit = Literal["generations", "per_1k_tokens"]

# CUSUM reference value, in standard deviations of the signal on normal traffic: the classic choice that
# makes the statistic most sensitive to a sustained shift of one standard deviation.
CUSUM_SLACK = 0.5


@dataclass(frozen=True)
class SignalThreshold:
    """A feature, the side on which it is abnormal, how it is tracked, and the calibrated alarm level.

    ``ewma``: the smoothed feature itself is compared with ``threshold``. ``cusum``: the one-sided CUSUM of
    the feature standardised by its normal-traffic ``mean``/``std`` is compared with ``threshold``.
    ``span`` (EWMA) and ``persistence`` override the calibration-wide values for this signal.
    """

    name: str
    direction: Direction
    threshold: float
    family: Family
    method: Method = "ewma"
    mean: float = 0.0
    std: float = 1.0
    span: int | None = None
    persistence: int | None = None

    def crossed(self, value: float) -> bool:
        """True when ``value`` (the tracked statistic) is past the threshold."""
        if self.method == "cusum":
            return value > self.threshold
        return value < self.threshold if self.direction == "low" else value > self.threshold

    def margin(self, statistic: float) -> float:
        """How far the tracked statistic is past the threshold, in normal-traffic standard deviations
        (negative before it; CUSUM statistics are standardised already)."""
        if self.method == "cusum":
            return statistic - self.threshold
        excess = self.threshold - statistic if self.direction == "low" else statistic - self.threshold
        return excess / self.std

    def standardised(self, value: float) -> float:
        """How far ``value`` lies on the abnormal side of normal traffic, in standard deviations."""
        z = (value - self.mean) / self.std
        return -z if self.direction == "low" else z


@dataclass(frozen=True)
class Calibration:
    """Thresholds for one model, set on normal traffic for a target false-alarm rate of the collapse verdict,
    counted in ``target_unit`` (files written before the unit existed count generations)."""

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
    outlier_dims: dict[int, list[int]] = field(default_factory=dict)
    probe: LinearProbe | None = None
    expected_lead_tokens: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    recurrence_levels: dict[int, float] = field(default_factory=dict)
    risk: RiskModel | None = None
    target_unit: TargetUnit = "generations"
    prefill_probe: PrefillProbe | None = None
    # False for a model served without a calibration (monitors.model_profile.uncalibrated): features from
    # the model's own profile, no thresholds, no verdicts.
    calibrated: bool = True

    def mean_state_arrays(self) -> dict[int, np.ndarray]:
        """The model's mean residual state per captured layer, as arrays."""
        return {layer: np.asarray(v, dtype=np.float64) for layer, v in self.mean_states.items()}

    def extractor_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`monitors.features.FeatureExtractor` that come from calibration."""
        return {
            "mean_states": self.mean_state_arrays(),
            "outlier_dims": self.outlier_dims,
            "probe": self.probe,
            "recurrence_levels": self.recurrence_levels,
            "prefill_probe": self.prefill_probe.prompt if self.prefill_probe else None,
        }

    def extractor_reference(self) -> dict[str, Any]:
        """What the feature extractor computes with besides bands and window (mean states, outlier dimensions,
        probe, recurrence levels, the prefill probe's prompt part: :meth:`extractor_options`), in JSON form:
        what names the monitoring profile and what a reload while serving must leave as it is."""
        return {
            "mean_states": {str(k): v for k, v in self.mean_states.items()},
            "outlier_dims": {str(k): v for k, v in self.outlier_dims.items()},
            "probe": self.probe.to_dict() if self.probe else None,
            "recurrence_levels": {str(k): v for k, v in self.recurrence_levels.items()},
            "prefill_probe": self.prefill_probe.prompt.to_dict() if self.prefill_probe else None,
        }

    def to_json(self) -> str:
        """Serialise to the JSON stored on disk (one signal or band per line where that keeps it readable)."""
        data = asdict(self)
        data["bands"] = {b.name: list(b.layers) for b in self.bands}
        data["mean_states"] = {str(k): v for k, v in self.mean_states.items()}
        data["outlier_dims"] = {str(k): v for k, v in self.outlier_dims.items()}
        data["recurrence_levels"] = {str(k): v for k, v in self.recurrence_levels.items()}
        data["probe"] = self.probe.to_dict() if self.probe else None
        if self.prefill_probe is None:
            del data["prefill_probe"]
        else:
            data["prefill_probe"] = self.prefill_probe.to_dict()
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Calibration":
        """Inverse of :meth:`to_json`; older files without the newer fields load with their defaults."""
        data = json.loads(text)
        data["bands"] = tuple(LayerBand(name, tuple(layers)) for name, layers in data["bands"].items())
        data["signals"] = tuple(SignalThreshold(**s) for s in data["signals"])
        data["mean_states"] = {int(k): v for k, v in data.get("mean_states", {}).items()}
        data["outlier_dims"] = {int(k): v for k, v in data.get("outlier_dims", {}).items()}
        data["recurrence_levels"] = {int(k): float(v) for k, v in data.get("recurrence_levels", {}).items()}
        data["probe"] = LinearProbe.from_dict(data["probe"]) if data.get("probe") else None
        risk = data.get("risk")
        data["risk"] = RiskModel(tuple(risk["scores"]), tuple(risk["probabilities"])) if risk else None
        prefill = data.get("prefill_probe")
        data["prefill_probe"] = PrefillProbe.from_dict(prefill) if prefill else None
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
    calibration = Calibration.from_json(path.read_text())
    overlay = rank_overlay_path(path)
    return with_rank_overlay(calibration, json.loads(overlay.read_text())) if overlay.is_file() else calibration


def rank_overlay_path(calibration_path: Path) -> Path:
    """Where the rank-exhaustion overlay of a calibration file lives: ``<name>.rank.json`` beside it."""
    return calibration_path.with_suffix(".rank.json")


def with_rank_overlay(calibration: Calibration, overlay: dict[str, Any]) -> Calibration:
    """The calibration with its rank-exhaustion part (``sinkwatch eval rank``'s overlay) in place of its own:
    recurrence levels, floors and ``rank`` signals. Kept in a file of its own so that refitting the sink
    detector and refitting rank exhaustion never rewrite each other's results."""
    sink_signals = tuple(s for s in calibration.signals if s.family != "rank")
    return replace(
        calibration,
        signals=sink_signals + tuple(SignalThreshold(**s) for s in overlay["signals"]),
        rank_floors=dict(overlay["rank_floors"]),
        recurrence_levels={int(k): float(v) for k, v in overlay["recurrence_levels"].items()},
        notes={**calibration.notes, "rank_exhaustion": overlay.get("notes", {})},
    )


def persistent_extreme(trajectory: np.ndarray, direction: Direction, persistence: int) -> float:
    """The most abnormal value the trajectory holds for ``persistence`` consecutive tokens (nan if shorter)."""
    if len(trajectory) < persistence:
        return float("nan")
    windows = np.lib.stride_tricks.sliding_window_view(trajectory, persistence)
    return float(windows.max(axis=1).min()) if direction == "low" else float(windows.min(axis=1).max())


def cusum(values: np.ndarray, spec: SignalThreshold) -> np.ndarray:
    """One-sided CUSUM ``S_t = max(0, S_{t-1} + z_t - CUSUM_SLACK)`` of the standardised abnormal excess."""
    out = np.empty(len(values))
    level = 0.0
    for i, value in enumerate(values):
        level = max(0.0, level + spec.standardised(float(value)) - CUSUM_SLACK)
        out[i] = level
    return out


def ewma(values: np.ndarray, span: int) -> np.ndarray:
    """Exponentially weighted moving average with ``alpha = 2 / (span + 1)``, seeded with the first value."""
    alpha = 2.0 / (span + 1)
    out = np.empty(len(values))
    level = values[0] if len(values) else 0.0
    for i, value in enumerate(values):
        level = value if i == 0 else alpha * value + (1 - alpha) * level
        out[i] = level
    return out


def tracked(values: np.ndarray, spec: SignalThreshold, span: int) -> np.ndarray:
    """The statistic the detector compares with ``spec.threshold``, token by token (``span`` unless the
    signal has its own)."""
    return cusum(values, spec) if spec.method == "cusum" else ewma(values, spec.span or span)


def fit_threshold(
    trajectories: list[np.ndarray], spec: SignalThreshold, span: int, persistence: int, fpr: float
) -> float:
    """The threshold that at most a fraction ``fpr`` of these (normal) generations cross for ``persistence``
    consecutive tracked tokens."""
    side: Direction = "high" if spec.method == "cusum" else spec.direction
    persistence = spec.persistence or persistence
    extremes = np.array([persistent_extreme(tracked(t, spec, span), side, persistence) for t in trajectories if len(t)])
    extremes = extremes[np.isfinite(extremes)]
    if not len(extremes):
        raise ValueError("no trajectory is long enough to calibrate on")
    return float(np.quantile(extremes, fpr if side == "low" else 1 - fpr))
