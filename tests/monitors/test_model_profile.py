"""A model's own profile: bands from its depth, outlier dimensions and mean states from its states on a neutral
text. On SmolLM2, checked against what the shipped calibration fitted on the model's healthy generations."""

import numpy as np
import pytest

from monitors.bands import captured_layers
from monitors.calibration import Calibration
from monitors.model_profile import derive_profile, outlier_dimensions, profile_model, uncalibrated


def test_a_dimension_holding_much_of_the_squared_norm_is_an_outlier_and_the_rest_are_not():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(200, 64))
    states[:, 5] *= 12.0  # 144 times the power of a typical dimension: 70 % of the squared norm
    states[:, 9] *= 1.3
    assert outlier_dimensions(states) == [5]


def test_the_profile_needs_the_states_of_every_banded_layer():
    states = {layer: np.ones((4, 8)) for layer in (4, 7, 13, 17, 23)}  # 27 is missing
    with pytest.raises(ValueError, match=r"\[27\]"):
        derive_profile(states, num_layers=30)


def test_an_uncalibrated_calibration_has_no_thresholds_and_says_so_on_disk_too():
    states = {layer: np.ones((4, 8)) for layer in (3, 4, 8, 10, 14, 16)}
    profile = derive_profile(states, num_layers=18)  # Gemma 3 270M's depth
    calibration = uncalibrated("some-model", profile)
    assert (calibration.signals, calibration.rank_floors, calibration.probe, calibration.risk) == ((), {}, None, None)
    assert calibration.bands == profile.bands and captured_layers(profile.bands) == (3, 4, 8, 10, 14, 16)
    loaded = Calibration.from_json(calibration.to_json())
    assert loaded.calibrated is False and loaded.outlier_dims == calibration.outlier_dims


@pytest.mark.model
def test_smollm2s_profile_recovers_the_shipped_bands_and_most_outlier_dimensions(loaded_model, calibration):
    profile = profile_model(loaded_model.model, loaded_model.tokenizer)
    assert profile.bands == calibration.bands
    for layer in (4, 7):  # the early band, where outliers matter most (docs/EVALUATION.md): exactly the shipped
        assert profile.outlier_dims[layer] == calibration.outlier_dims[layer]
    shipped = {(layer, d) for layer, dims in calibration.outlier_dims.items() for d in dims}
    derived = {(layer, d) for layer, dims in profile.outlier_dims.items() for d in dims}
    # measured: 17 of the 21 shipped pairs (371, an outlier of the chat template's tokens, is not one of
    # prose), and 2 more (521 at the late band)
    assert len(shipped & derived) >= 17 and len(derived - shipped) <= 2
    for layer, mean in profile.mean_states.items():  # measured: cosine 0.96 (layer 4) down to 0.84 (layer 23)
        a, b = np.asarray(mean), np.asarray(calibration.mean_states[layer])
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.8, layer  # where the healthy generations' point
