"""What the monitors need to know about a model that no calibration describes, derived from the model itself.

- Layer bands: the model's depth cut in early/middle/late thirds (:func:`monitors.bands.default_bands`; on
  SmolLM2-135M's 30 layers these are the shipped calibration's bands).
- Outlier dimensions, per captured layer: the dimensions that hold more than ``OUTLIER_SHARE`` of the mean
  squared residual state over a fixed neutral text, its first position left out. A transformer's residual
  stream carries a few massive activations that dominate every state; a uniform dimension of SmolLM2's 576
  holds 0.17 % of the squared norm, an outlier more than ten times that. ``sinkwatch calibrate`` marks
  outliers by the same share over its healthy generations (``--outlier-share 0.02``). The first position is
  the attention sink: on SmolLM2 one dimension (507) holds 98 % of its middle-layer norm there and would hide
  the others. Measured on SmolLM2 (docs/EVALUATION.md, "Uncalibrated models"): the early band's outliers are
  the shipped ones exactly; over all six layers 17 of the shipped 21 (layer, dimension) pairs are recovered
  (371 is an outlier of the chat template's tokens, not of prose) and 2 are added.
- Mean states per captured layer, the reference of the ``drift`` feature, over the same text.
- The window: the default the shipped calibration uses.

:func:`derive_profile` works on states already captured (numpy only); :func:`profile_model` runs the neutral
text through a transformers causal LM and derives its profile. :func:`uncalibrated` turns a profile into
the ``Calibration`` the monitors run with when a model has none: no thresholds, so nothing is ever judged.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitors.bands import LayerBand, captured_layers, default_bands
from monitors.calibration import Calibration

__all__ = [
    "DEFAULT_WINDOW",
    "NEUTRAL_TEXT",
    "OUTLIER_SHARE",
    "UNCALIBRATED",
    "ModelProfile",
    "derive_profile",
    "outlier_dimensions",
    "profile_model",
    "uncalibrated",
]

OUTLIER_SHARE = 0.02
UNCALIBRATED = "uncalibrated"  # the ``created`` of a model's uncalibrated configuration (records name it)
DEFAULT_WINDOW = 32
# Plain expository prose on ordinary topics: no lists, code, dialogue or repetition, so that the states are
# the model's ordinary ones and none of its special-purpose behaviour.
NEUTRAL_TEXT = (
    "The river begins high in the hills, where snow melts slowly through the spring. It gathers small streams "
    "as it descends, passing farms, old stone bridges and a market town that grew up around a ford. Most of "
    "the year the water is calm and clear, and people walk along its banks in the evening. In autumn, heavy "
    "rain can raise the level quickly, so the town keeps records of every flood and maintains low walls near "
    "the square. Further downstream the valley widens into meadows used for grazing, and the river turns "
    "broad and slow before it reaches the estuary. There, birds feed on the mud flats at low tide, fishing "
    "boats wait for the current to change, and a lighthouse marks the channel for ships coming in from the "
    "sea. Historians believe the first settlement was built for trade: wool went down the river, while salt, "
    "tools and news came up. Today the railway carries most goods, but the river still shapes how the region "
    "lives, what it grows and where its roads run."
)


@dataclass(frozen=True)
class ModelProfile:
    """Bands, per-layer outlier dimensions and mean states of one model, and the window its features use."""

    bands: tuple[LayerBand, ...]
    outlier_dims: dict[int, list[int]]
    mean_states: dict[int, list[float]]
    window: int = DEFAULT_WINDOW


def outlier_dimensions(states: np.ndarray, share: float = OUTLIER_SHARE) -> list[int]:
    """The dimensions holding more than ``share`` of the mean squared state of ``states`` (``[tokens, d]``)."""
    power = (np.asarray(states, dtype=np.float64) ** 2).mean(axis=0)
    return [int(d) for d in np.flatnonzero(power / power.sum() > share)]


def derive_profile(
    states: Mapping[int, np.ndarray], num_layers: int, share: float = OUTLIER_SHARE, window: int = DEFAULT_WINDOW
) -> ModelProfile:
    """The profile of a ``num_layers``-layer model from its residual states (``layer -> [tokens, d]``) on a
    neutral text; ``states`` must cover every layer of :func:`~monitors.bands.default_bands`."""
    bands = default_bands(num_layers)
    missing = [layer for layer in captured_layers(bands) if layer not in states]
    if missing:
        raise ValueError(f"states of layers {missing} are needed for the bands of a {num_layers}-layer model")
    layers = captured_layers(bands)
    return ModelProfile(
        bands=bands,
        outlier_dims={layer: outlier_dimensions(states[layer], share) for layer in layers},
        mean_states={layer: [round(float(x), 5) for x in np.mean(states[layer], axis=0)] for layer in layers},
        window=window,
    )


def profile_model(model: Any, tokenizer: Any, text: str = NEUTRAL_TEXT) -> ModelProfile:
    """Run ``text`` through a transformers causal LM (decoder layers at ``model.model.layers``) once and derive
    its profile from the states at every position but the first (the attention sink)."""
    import torch

    from monitors.capture import ResidualCapture

    decoder_layers = model.model.layers
    layers = captured_layers(default_bands(len(decoder_layers)))
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    capture = ResidualCapture(decoder_layers, layers, all_positions=True)
    with torch.inference_mode(), capture.attached():
        model.model(input_ids=ids)  # the decoder stack only: no logits over the vocabulary (Gemma's is 262k wide)
        states = capture.take()[0, 1:].double().numpy()  # [tokens, layers, d]
    return derive_profile({layer: states[:, i] for i, layer in enumerate(layers)}, len(decoder_layers))


def uncalibrated(model: str, profile: ModelProfile) -> Calibration:
    """The monitors' configuration for ``model`` without a calibration: its own profile and no thresholds, so
    the features are computed and reported but no verdict is ever taken."""
    return Calibration(
        model=model,
        window=profile.window,
        bands=profile.bands,
        ewma_span=1,
        persistence=1,
        min_agreeing=1,
        target_fpr=0.0,
        signals=(),
        rank_floors={},
        created=UNCALIBRATED,
        mean_states=profile.mean_states,
        outlier_dims=profile.outlier_dims,
        calibrated=False,
    )
