"""Reloading the calibration: a new file is put in force for new monitors (monitors already made keep theirs),
a file that cannot be loaded or that would change the features keeps the old one, and the metric names the
calibration in force by its file's sha256."""

import hashlib
import logging
from dataclasses import replace

from gateway import metrics
from gateway.backends.vllm import NO_PROFILE, vllm_backend
from gateway.config import Settings
from gateway.drain import Drain
from gateway.serving.calibration_reload import CalibrationReloader
from gateway.serving.serving_context import ServingContext
from monitors.bands import LayerBand
from monitors.calibration import SignalThreshold
from monitors.model_profile import uncalibrated
from monitors.prefill import PrefillProbe
from monitors.probe import LinearProbe
from monitors.vllm_plugin.wire import monitor_profile
from tests.gate.scripted import CALIBRATION, MODEL, ScriptedBackend


def _context(path) -> ServingContext:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ServingContext(Settings(), ScriptedBackend([4]), CALIBRATION, 0, Drain(), calibration_digest=digest)


def _info() -> dict[str, str]:
    [family] = list(metrics.CALIBRATION.collect())
    return next(s.labels for s in family.samples if s.labels["model"] == MODEL)


def test_a_new_file_judges_new_monitors_and_monitors_made_before_keep_theirs(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(CALIBRATION.to_json())
    ctx = _context(path)
    before = ctx.monitor_factory()()
    stricter = replace(
        CALIBRATION, created="2026-12-07", signals=(SignalThreshold("entropy", "low", 2.5, "sink"),), min_agreeing=1
    )
    path.write_text(stricter.to_json())
    assert CalibrationReloader(ctx, path).reload("test")
    after = ctx.monitor_factory()()
    assert after.calibration.signals == stricter.signals and ctx.calibration.created == "2026-12-07"
    assert before.calibration is CALIBRATION
    assert _info()["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert _info()["created"] == "2026-12-07"


def test_a_broken_file_keeps_the_calibration_in_force_and_says_why(tmp_path, caplog):
    path = tmp_path / "calibration.json"
    path.write_text(CALIBRATION.to_json())
    ctx = _context(path)
    path.write_text('{"model": "half a file"')
    with caplog.at_level(logging.ERROR):
        assert not CalibrationReloader(ctx, path).reload("SIGHUP")
    assert ctx.calibration is CALIBRATION
    assert "keeping calibration scripted-model@" in caplog.text and "cannot be loaded" in caplog.text
    path.write_text('{"model": "no bands"}')
    assert not CalibrationReloader(ctx, path).reload("SIGHUP")
    assert ctx.calibration is CALIBRATION


def test_a_file_that_changes_the_features_takes_a_restart(tmp_path, caplog):
    path = tmp_path / "calibration.json"
    path.write_text(CALIBRATION.to_json())
    ctx = _context(path)
    digest = ctx.calibration_digest
    path.write_text(replace(CALIBRATION, bands=(LayerBand("late", (2,)),)).to_json())
    with caplog.at_level(logging.ERROR):
        assert not CalibrationReloader(ctx, path).reload("SIGHUP")
    assert "takes a restart" in caplog.text
    assert ctx.calibration is CALIBRATION and ctx.calibration_digest == digest


def test_a_file_with_another_prefill_probe_takes_a_restart(tmp_path, caplog):
    """The prefill probe's prompt part is computed by the extractor, like the other references."""
    path = tmp_path / "calibration.json"
    path.write_text(CALIBRATION.to_json())
    ctx = _context(path)
    prompt = LinearProbe((2,), (0.5, -0.5), 0.1, (0.0, 0.0), (1.0, 1.0))
    path.write_text(replace(CALIBRATION, prefill_probe=PrefillProbe(prompt, 1.0, (0.5,) * 6, -1.0)).to_json())
    with caplog.at_level(logging.ERROR):
        assert not CalibrationReloader(ctx, path).reload("SIGHUP")
    assert "takes a restart" in caplog.text
    assert ctx.calibration is CALIBRATION


def test_in_front_of_vllm_a_gateway_started_uncalibrated_takes_its_fitted_file(tmp_path):
    """The plugin computes the features from its own file, so the gateway's bands (it has none when uncalibrated:
    it cannot see the model's depth) are not its to keep: it takes the file, and new requests expect the
    features the plugin makes with it."""
    settings = Settings().replace(backend="vllm", served_model_name=MODEL, upstreams=["http://127.0.0.1:9/v1"])
    started = uncalibrated(MODEL, NO_PROFILE)
    backend = vllm_backend(settings, started, None)
    ctx = ServingContext(settings, backend, started, 0, Drain())
    expected_before = backend.receiver.profile
    path = tmp_path / "fitted.json"
    path.write_text(CALIBRATION.to_json())
    assert CalibrationReloader(ctx, path).reload("SIGHUP")
    assert ctx.calibration.calibrated and backend.calibration == ctx.calibration
    assert backend.receiver.profile == monitor_profile(CALIBRATION, CALIBRATION.bands) != expected_before
    assert backend.receiver.open("new").profile == backend.receiver.profile
