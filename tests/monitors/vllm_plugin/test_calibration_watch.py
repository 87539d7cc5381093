"""The plugin's reducer takes a new calibration file without a restart of vLLM: requests that start after the
file changed get extractors and a profile from it, requests under way keep theirs; a broken file or one with
other bands keeps the calibration in force."""

import logging
from dataclasses import replace

import numpy as np
import pytest
import zmq

from monitors.bands import LayerBand
from monitors.model_profile import ModelProfile, uncalibrated
from monitors.vllm_plugin import calibration_watch
from monitors.vllm_plugin.calibration_watch import CalibrationWatch
from monitors.vllm_plugin.reducer import FeatureReducer, new_extractor_factory
from monitors.vllm_plugin.settings import PluginSettings
from monitors.vllm_plugin.sinks import SinkSockets
from monitors.vllm_plugin.step import CapturedStep
from monitors.vllm_plugin.wire import RequestTag, decode_batch, monitor_profile


@pytest.fixture(autouse=True)
def look_every_time(monkeypatch):
    monkeypatch.setattr(calibration_watch, "WATCH_INTERVAL_S", 0.0)


def _reducer(calibration, path) -> FeatureReducer:
    bands = calibration.bands
    sockets = SinkSockets(PluginSettings.from_env({}).allowed_sinks)
    watch = CalibrationWatch(path, calibration, bands)
    return FeatureReducer(
        new_extractor_factory(calibration, bands), monitor_profile(calibration, bands), sockets, watch
    )


def _step(calibration, engine_ids, tags, seed: int) -> CapturedStep:
    layers = len({layer for band in calibration.bands for layer in band.layers})
    rows = np.random.default_rng(seed).normal(size=(len(engine_ids), layers, 576)).astype(np.float32)
    return CapturedStep(engine_ids, tags, [1] * len(engine_ids), rows, np.ones(len(engine_ids)))


def _profiles(pull, messages: int) -> dict[str, str]:
    """Request id -> the profile its features came with, over the next ``messages`` messages."""
    out = {}
    for _ in range(messages):
        assert pull.poll(5000), "no message from the reducer"
        profile, items = decode_batch(pull.recv())
        out.update({rid: profile for rid, _ in items})
    return out


def test_requests_started_after_a_new_file_use_it_and_those_under_way_keep_theirs(calibration, tmp_path, sink):
    path = tmp_path / "calibration.json"
    path.write_text(calibration.to_json())
    reducer = _reducer(calibration, path)
    address = sink.getsockopt_string(zmq.LAST_ENDPOINT)
    old, new = RequestTag("old", address), RequestTag("new", address)
    try:
        reducer.process(_step(calibration, ["e-old"], [old], 0))
        assert _profiles(sink, 1) == {"old": monitor_profile(calibration, calibration.bands)}
        other_reference = replace(calibration, outlier_dims={layer: [1, 2] for layer in calibration.outlier_dims})
        path.write_text(other_reference.to_json())
        reducer.reload_if_changed()
        reducer.process(_step(calibration, ["e-old", "e-new"], [old, new], 1))
        assert _profiles(sink, 2) == {
            "old": monitor_profile(calibration, calibration.bands),
            "new": monitor_profile(other_reference, calibration.bands),
        }
    finally:
        reducer.close()


def test_a_broken_file_or_other_bands_keep_the_calibration_in_force(calibration, tmp_path, caplog):
    path = tmp_path / "calibration.json"
    path.write_text(calibration.to_json())
    watch = CalibrationWatch(path, calibration, calibration.bands)
    path.write_text("{half a file")
    with caplog.at_level(logging.ERROR, logger="sinkwatch.reducer"):
        assert watch.changed() is None
    assert "cannot be loaded" in caplog.text
    path.write_text(replace(calibration, bands=(LayerBand("late", (3,)),)).to_json())
    assert watch.changed() is None
    assert "other bands or another window" in caplog.text
    assert watch.current is calibration
    refitted = replace(calibration, created="2030-01-01")
    path.write_text(refitted.to_json())
    assert watch.changed() == refitted
    assert watch.changed() is None  # nothing new since


def test_an_awaited_file_is_taken_when_it_is_first_written(calibration, tmp_path):
    path = tmp_path / "written-later.json"
    waiting = uncalibrated(calibration.model, ModelProfile(calibration.bands, {}, {}))
    watch = CalibrationWatch(path, waiting, calibration.bands)
    assert watch.changed() is None  # not there yet: the model stays uncalibrated
    path.write_text(calibration.to_json())
    assert watch.changed() == calibration
