"""Calibrating a model that has no calibration from its recording: a recording made uncalibrated is fitted on
the default signal set over the recorded setup, loops are told by the default visible-loop rule, and the
result is a calibration a gateway that started uncalibrated on the same profile reloads on SIGHUP; rank floors
take a second recording, made under recurrence levels fitted on the first."""

import argparse
import json
import math
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from gateway import metrics
from gateway.config import Settings
from gateway.drain import Drain
from gateway.recording.recorder import TrafficRecorder
from gateway.recording.trace import SignalTrace, calibration_setup, generation_record
from gateway.serving.calibration_reload import CalibrationReloader
from gateway.serving.serving_context import ServingContext
from lab.eval.traffic import SetupMismatch, by_time, read_recording, recorded_uncalibrated
from lab.eval.traffic_command import run_from_traffic
from lab.eval.traffic_defaults import VISIBLE_LOOP, default_base
from lab.eval.traffic_fit import TrafficFitOptions, firing, fit_from_traffic, loop_rule
from monitors.bands import captured_layers, default_bands
from monitors.calibration import load_calibration
from monitors.features import FeatureExtractor
from monitors.model_profile import derive_profile, uncalibrated
from tests.gate.scripted import MODEL as SCRIPTED_MODEL
from tests.gate.scripted import ScriptedBackend

MODEL = "new-model"
TOKENS = 120
LAYERS = 9  # default bands capture layers 1, 2, 4, 5, 7, 8


@pytest.fixture(scope="module")
def profile():
    rng = np.random.default_rng(0)
    states = {layer: rng.normal(size=(40, 16)) * np.r_[8.0, np.ones(15)] for layer in range(LAYERS)}
    return derive_profile(states, LAYERS)


@pytest.fixture(scope="module")
def recorded_under(profile):
    return uncalibrated(MODEL, profile)


def _signals(rng: np.random.Generator, looping_from: int | None, recurrence_mean: float) -> list[dict[str, float]]:
    """A synthetic generation's signals: healthy noise, or a loop from ``looping_from`` (visible 20 later)."""
    steps = []
    for t in range(TOKENS):
        looping = looping_from is not None and t >= looping_from
        values = {"text.periodicity": 1.0 if looping and t >= looping_from + 20 else float(rng.choice([0, 0.0625]))}
        if t >= 32:
            for band in ("early", "middle", "late"):
                values[f"{band}.recurrence"] = (
                    0.999 if looping else float(np.clip(rng.normal(recurrence_mean, 0.08), 0, 1))
                )
        steps.append(values)
    return steps


def _record(
    directory: Path, calibration, count: int, loop_every: int, recurrence_mean: float = 0.78, model: str = MODEL
) -> None:
    rng = np.random.default_rng(1)
    recorder = TrafficRecorder(directory, 10**9)
    context = {"model": model, "backend": "embedded", "endpoint": "completions", **calibration_setup(calibration, "")}
    for number in range(count):
        looping_from = 60 if number % loop_every == loop_every - 1 else None
        trace = SignalTrace()
        for values in _signals(rng, looping_from, recurrence_mean):
            trace.add(values)
        recorder.submit(partial(generation_record, trace, context, "length", None, float(number)))
    recorder.close()


def _fit(directory: Path, profile, held_out: float = 0.3):
    generations, _ = read_recording(directory)
    base = default_base(MODEL, generations[0].setup, profile.mean_states)
    return generations, base, fit_from_traffic(generations, base, TrafficFitOptions(held_out=held_out))


def test_an_uncalibrated_recording_is_fitted_on_the_default_signals_of_its_own_setup(tmp_path, profile, recorded_under):
    _record(tmp_path, recorded_under, 200, loop_every=10)
    generations, base, fitted = _fit(tmp_path, profile)
    assert recorded_uncalibrated(generations[0].setup)
    assert loop_rule(base) is VISIBLE_LOOP  # the default base has no fitted text level of its own
    calibration = fitted.calibration
    names = [(s.name, s.method, s.span, s.persistence) for s in calibration.signals]
    assert names == [
        ("text.periodicity", "ewma", None, None),
        ("early.recurrence", "ewma", None, None),
        ("middle.recurrence", "ewma", None, None),
        ("late.recurrence", "ewma", None, None),
    ]
    assert (calibration.ewma_span, calibration.persistence) == (8, 4)  # the documented default tracking
    assert all(math.isfinite(s.threshold) for s in calibration.signals)
    assert all(0.78 < s.threshold < 0.999 for s in calibration.signals if s.name.endswith(".recurrence"))
    assert calibration.model == MODEL and calibration.calibrated
    assert (calibration.bands, calibration.window) == (profile.bands, profile.window)
    assert (calibration.outlier_dims, calibration.mean_states) == (profile.outlier_dims, profile.mean_states)
    assert calibration.rank_floors == {}  # recorded without recurrence levels: no novel PR to fit floors on
    report = fitted.report
    assert report["fit_visible_loops_dropped"] == 14 and report["held_out_loops_caught"] == 6
    assert report["recorded_under"] == f"{MODEL}@uncalibrated" and "default visible-loop rule" in report["loop_filter"]
    healthy = [g for i, g in enumerate(generations) if i % 10 != 9]
    assert (firing(calibration.signals, healthy[-50:], 8, 4) < 0).mean() > 0.9


def test_the_default_thresholds_are_the_recordings_not_constants(tmp_path, profile, recorded_under):
    _record(tmp_path / "low", recorded_under, 120, loop_every=12, recurrence_mean=0.65)
    _record(tmp_path / "high", recorded_under, 120, loop_every=12, recurrence_mean=0.85)

    def levels(directory: Path) -> dict[str, float]:
        return {s.name: s.threshold for s in _fit(directory, profile, 0.2)[2].calibration.signals}

    low, high = levels(tmp_path / "low"), levels(tmp_path / "high")
    assert all(high[f"{band}.recurrence"] > low[f"{band}.recurrence"] + 0.05 for band in ("early", "middle", "late"))


def test_a_gateway_that_started_uncalibrated_reloads_the_fitted_calibration(tmp_path, profile, recorded_under):
    _record(tmp_path / "rec", recorded_under, 60, loop_every=10)
    path = tmp_path / "calibration.json"
    path.write_text(_fit(tmp_path / "rec", profile)[2].calibration.to_json())
    ctx = ServingContext(Settings(), ScriptedBackend([4]), recorded_under, 0, Drain())
    metrics.model_ready(SCRIPTED_MODEL, "scripted", recorded_under)
    assert metrics.MODEL_CALIBRATED.labels(SCRIPTED_MODEL)._value.get() == 0
    assert CalibrationReloader(ctx, path).reload("SIGHUP")
    assert ctx.calibration.calibrated and ctx.calibration == load_calibration(path)
    assert metrics.MODEL_CALIBRATED.labels(SCRIPTED_MODEL)._value.get() == 1  # SinkwatchModelUncalibrated clears
    assert ctx.gate_config.holdback_tokens > 0  # it judges now


def test_a_calibration_on_another_profile_is_refused_by_a_gateway_started_uncalibrated(
    tmp_path, profile, recorded_under
):
    _record(tmp_path / "rec", recorded_under, 60, loop_every=10)
    other = {layer: [x + 1.0 for x in state] for layer, state in profile.mean_states.items()}
    generations, _ = read_recording(tmp_path / "rec")
    base = default_base(MODEL, generations[0].setup, other)
    path = tmp_path / "calibration.json"
    path.write_text(fit_from_traffic(generations, base, TrafficFitOptions()).calibration.to_json())
    ctx = ServingContext(Settings(), ScriptedBackend([4]), recorded_under, 0, Drain())
    assert not CalibrationReloader(ctx, path).reload("SIGHUP")
    assert ctx.calibration is recorded_under


def _from_traffic_args(tmp_path: Path) -> argparse.Namespace:
    """``calibrate --from-traffic tmp_path/rec -o tmp_path/out.json --held-out 0.3``."""
    return argparse.Namespace(
        from_traffic=tmp_path / "rec",
        output=tmp_path / "out.json",
        base=None,
        held_out=0.3,
        target_fpr=0.05,
        rank_fpr=0.05,
        rank_levels=False,
    )


def test_a_recording_behind_the_vllm_plugin_is_calibrated_without_loading_the_model(tmp_path, profile):
    # The plugin derives no reference: bands only, no outlier dimensions, no mean states.
    plugin = replace(uncalibrated(MODEL, profile), outlier_dims={}, mean_states={})
    _record(tmp_path / "rec", plugin, 60, loop_every=10)
    args = _from_traffic_args(tmp_path)
    fitted = run_from_traffic(args)  # "new-model" is no model that could be loaded: none is
    assert load_calibration(args.output) == fitted
    assert (fitted.outlier_dims, fitted.mean_states, fitted.bands) == ({}, {}, profile.bands)
    assert {s.name for s in fitted.signals} >= {"text.periodicity", "early.recurrence"}


def _record_states(directory: Path, calibration, count: int, seed: int) -> None:
    """Record ``count`` generations whose signals the real feature extractor computes, as the gateway serving
    ``calibration`` does, on random hidden states of the profile's width (no loops)."""
    rng = np.random.default_rng(seed)
    recorder = TrafficRecorder(directory, 10**9)
    context = {"model": MODEL, "backend": "embedded", "endpoint": "completions", **calibration_setup(calibration, "")}
    layers = captured_layers(calibration.bands)
    for number in range(count):
        extractor = FeatureExtractor(calibration.bands, calibration.window, **calibration.extractor_options())
        trace = SignalTrace()
        for token in range(TOKENS):
            step = extractor.push(rng.normal(size=(len(layers), 16)), 1.0, token)
            trace.add({"text.periodicity": 0.0, **step.values})
        recorder.submit(partial(generation_record, trace, context, "length", None, float(number)))
    recorder.close()


def test_rank_floors_of_a_model_recorded_uncalibrated_come_from_a_second_recording_under_fitted_levels(
    tmp_path, profile, recorded_under
):
    _record_states(tmp_path / "first", recorded_under, 40, seed=2)
    generations, _ = read_recording(tmp_path / "first")
    base = default_base(MODEL, generations[0].setup, profile.mean_states)
    assert fit_from_traffic(generations, base, TrafficFitOptions()).calibration.rank_floors == {}  # no novel PR
    fitted = fit_from_traffic(generations, base, TrafficFitOptions(fit_levels=True))
    first = fitted.calibration
    assert first.rank_floors == {} and not [s for s in first.signals if s.family == "rank"]
    assert "none yet" in fitted.report["rank_floors"]
    fit_part = by_time(generations, 0.3)[0]
    for band in first.bands:  # each band's median recorded recurrence, the level of each of its layers
        recurrence = np.concatenate([g.values(f"{band.name}.recurrence") for g in fit_part])
        median = float(np.median(recurrence[np.isfinite(recurrence)]))
        assert [first.recurrence_levels[layer] for layer in band.layers] == [median] * len(band.layers)
    assert tuple(sorted(first.recurrence_levels)) == captured_layers(first.bands)

    # Served with the first fit, the extractor computes the novel PR; that recording fitted on it gives floors.
    _record_states(tmp_path / "second", first, 40, seed=3)
    recorded, _ = read_recording(tmp_path / "second")
    assert all(np.isfinite(g.values(f"{band.name}.pr_novel")).any() for g in recorded for band in first.bands)
    second = fit_from_traffic(recorded, first, TrafficFitOptions()).calibration
    assert set(second.rank_floors) == {"early", "middle", "late"}
    assert all(4.0 < floor < 16.0 for floor in second.rank_floors.values())  # novel PR of 16-wide random states
    assert [s.name for s in second.signals if s.family == "rank"] == [
        f"{band}.rank_margin" for band in second.rank_floors
    ]
    assert second.recurrence_levels == first.recurrence_levels

    # The levels take a restart (a reload into the uncalibrated gateway is refused); the floors then a SIGHUP.
    paths = {name: tmp_path / f"{name}.json" for name in ("first", "second")}
    for name, calibration in (("first", first), ("second", second)):
        paths[name].write_text(calibration.to_json())
    unconfigured = ServingContext(Settings(), ScriptedBackend([4]), recorded_under, 0, Drain())
    assert not CalibrationReloader(unconfigured, paths["first"]).reload("SIGHUP")
    restarted = ServingContext(Settings(), ScriptedBackend([4]), load_calibration(paths["first"]), 0, Drain())
    assert CalibrationReloader(restarted, paths["second"]).reload("SIGHUP")
    assert restarted.calibration.rank_floors == second.rank_floors


def test_a_second_recording_into_the_same_folder_is_read_under_the_base_it_was_made_with(tmp_path, recorded_under):
    # Behind vLLM nothing restarts between the two recordings, so both go to one --record-dir; with --base
    # the fit reads the records made under that base, even where the first recording has more.
    _record_states(tmp_path / "rec", recorded_under, 60, seed=2)
    generations, _ = read_recording(tmp_path / "rec")
    base = default_base(MODEL, generations[0].setup, {})
    levels = fit_from_traffic(generations, base, TrafficFitOptions(fit_levels=True)).calibration
    (tmp_path / "levels.json").write_text(levels.to_json())
    _record_states(tmp_path / "rec", levels, 40, seed=3)
    args = _from_traffic_args(tmp_path)
    args.base = tmp_path / "levels.json"
    fitted = run_from_traffic(args)
    assert fitted.notes["recording_left_out"]["other_setup"] == 60
    assert set(fitted.rank_floors) == {"early", "middle", "late"}
    (tmp_path / "other.json").write_text(replace(levels, window=16).to_json())
    args.base = tmp_path / "other.json"
    with pytest.raises(SetupMismatch, match="base calibration's setup"):  # a base nothing was recorded under
        run_from_traffic(args)


def test_a_recording_behind_the_vllm_plugin_that_names_no_bands_is_fitted_on_the_plugins_thirds(tmp_path, profile):
    # A gateway in front of vLLM cannot see the model's depth: its uncalibrated recording names no bands, and
    # the plugin computed the features on the thirds of the model's depth, which the model's config gives.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": LAYERS}))
    gateway_view = replace(uncalibrated(str(model), profile), bands=(), outlier_dims={}, mean_states={})
    _record(tmp_path / "rec", gateway_view, 60, loop_every=10, model=str(model))
    args = _from_traffic_args(tmp_path)
    fitted = run_from_traffic(args)
    assert fitted.bands == default_bands(LAYERS) == profile.bands
    assert (fitted.outlier_dims, fitted.mean_states) == ({}, {})
    assert {s.name for s in fitted.signals} == {"text.periodicity"} | {
        f"{b}.recurrence" for b in ("early", "middle", "late")
    }
