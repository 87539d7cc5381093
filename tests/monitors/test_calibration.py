"""Calibration files: round trip, older files, the shipped one, and threshold fitting."""

import json
from dataclasses import replace

import numpy as np
import pytest

from monitors.calibration import (
    Calibration,
    SignalThreshold,
    cusum,
    ewma,
    fit_threshold,
    load_calibration,
    persistent_extreme,
    shipped_calibration_path,
)
from monitors.probe import LinearProbe

MODEL = "SmolLM2-135M-Instruct"


def test_the_shipped_calibration_loads_and_its_probe_reads_captured_layers():
    calibration = load_calibration(MODEL)
    layers = {layer for band in calibration.bands for layer in band.layers}
    assert calibration.signals
    assert set(calibration.mean_states) == layers
    if calibration.probe is not None:
        assert set(calibration.probe.layers) <= layers


def test_a_calibration_round_trips_through_json_with_probe_and_outlier_dimensions():
    shipped = load_calibration(MODEL)
    probe = LinearProbe((4,), (0.5, 0.25), -1.0, (0.0, 1.0), (1.0, 1.0), horizon=8)
    calibration = replace(shipped, probe=probe, outlier_dims={4: [1, 7]}, expected_lead_tokens=3.5)
    again = Calibration.from_json(calibration.to_json())
    assert again.probe == probe
    assert again.outlier_dims == {4: [1, 7]}
    assert again.signals == calibration.signals
    assert again.expected_lead_tokens == 3.5


def test_the_shipped_calibration_counts_its_target_per_1k_tokens_and_the_unit_round_trips():
    shipped = load_calibration(MODEL)
    assert shipped.target_unit == "per_1k_tokens"
    assert Calibration.from_json(replace(shipped, target_unit="generations").to_json()).target_unit == "generations"


def test_a_file_from_before_probes_and_cusum_still_loads():
    data = json.loads(shipped_calibration_path(MODEL).read_text())
    for key in ("probe", "outlier_dims", "expected_lead_tokens", "notes", "target_unit"):
        data.pop(key, None)
    for signal in data["signals"]:
        for key in ("method", "mean", "std"):
            signal.pop(key, None)
    old = Calibration.from_json(json.dumps(data))
    assert old.probe is None and old.outlier_dims == {}
    assert old.target_unit == "generations"
    assert all(s.method == "ewma" for s in old.signals)


def test_an_ewma_threshold_is_crossed_persistently_by_at_most_the_target_fraction_of_normal_generations():
    rng = np.random.default_rng(0)
    trajectories = [rng.normal(5.0, 1.0, 60) for _ in range(200)]
    spec = SignalThreshold("x", "low", float("nan"), "rank")
    threshold = fit_threshold(trajectories, spec, span=4, persistence=3, fpr=0.1)
    fired = [persistent_extreme(ewma(t, 4), "low", 3) < threshold for t in trajectories]
    assert threshold < 5.0
    assert np.mean(fired) <= 0.1


def test_cusum_accumulates_a_sustained_shift_and_forgets_noise():
    spec = SignalThreshold("x", "high", 5.0, "sink", "cusum", mean=0.0, std=1.0)
    shifted = cusum(np.concatenate([np.zeros(20), np.full(20, 1.5)]), spec)
    assert shifted[19] == 0.0
    assert shifted[-1] == pytest.approx(20 * 1.0)
    low = SignalThreshold("x", "low", 5.0, "sink", "cusum", mean=0.0, std=1.0)
    assert cusum(np.full(10, 2.0), low)[-1] == 0.0
