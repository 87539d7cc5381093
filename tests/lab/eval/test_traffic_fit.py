"""Calibrating from a recording: records written by the gateway's recorder are read back under one setup,
visible loops are dropped before fitting, thresholds follow the traffic, and the later traffic held out is
judged by them (its alarm rate and the loops caught in the report)."""

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from gateway.recording.recorder import TrafficRecorder
from gateway.recording.trace import SignalTrace, calibration_setup, generation_record
from lab.eval.traffic import SetupMismatch, read_recording
from lab.eval.traffic_fit import TrafficFitOptions, firing, fit_from_traffic
from monitors.bands import LayerBand
from monitors.calibration import load_calibration

MODEL = "SmolLM2-135M-Instruct"
TOKENS = 120


@pytest.fixture(scope="module")
def base():
    return load_calibration(MODEL)


def _signals(rng: np.random.Generator, loops: bool, recurrence_mean: float) -> list[dict[str, float]]:
    """Per-token signals of a synthetic generation: healthy noise, or a loop from token 60 on."""
    steps = []
    for t in range(TOKENS):
        looping = loops and t >= 60
        values = {
            "entropy": float(rng.gamma(2.0, 0.8)),
            "text.periodicity": 1.0 if looping and t >= 80 else float(rng.choice([0.0, 0.0625, 0.125])),
        }
        if t >= 32:
            for band in ("early", "middle", "late"):  # whichever band's recurrence the base calibration uses
                recurrence = float(np.clip(rng.normal(recurrence_mean, 0.08), 0, 1))
                values[f"{band}.recurrence"] = 0.999 if looping else recurrence
            values["early.cosine"] = 0.95 if looping else float(rng.normal(0.54, 0.1))
            values["early.drift"] = float(rng.normal(0.68, 0.07))
            for band in ("early", "middle", "late"):
                values[f"{band}.pr_novel"] = float(rng.normal(12.0, 1.5))
        steps.append(values)
    return steps


def _record(directory: Path, base, count: int, loop_every: int = 0, recurrence_mean: float = 0.78, seed: int = 0):
    """Write ``count`` generations (every ``loop_every``-th one a loop) through the gateway's recorder."""
    rng = np.random.default_rng(seed)
    recorder = TrafficRecorder(directory, 10**9)
    context = {"model": MODEL, "backend": "embedded", "endpoint": "chat", **calibration_setup(base, "abc")}
    for number in range(count):
        trace = SignalTrace()
        for values in _signals(rng, bool(loop_every) and number % loop_every == loop_every - 1, recurrence_mean):
            trace.add(values)
        recorder.submit(partial(generation_record, trace, context, "length", None, float(number)))
    recorder.close()


def test_visible_loops_are_dropped_before_fitting_and_caught_when_held_out(tmp_path, base):
    _record(tmp_path, base, 200, loop_every=10)
    generations, left_out = read_recording(tmp_path)
    assert len(generations) == 200 and left_out == {"other_setup": 0}
    fitted = fit_from_traffic(generations, base, TrafficFitOptions(target_fpr=0.05, held_out=0.3))
    report = fitted.report
    assert report["fit_generations"] == 140 and report["fit_visible_loops_dropped"] == 14
    assert report["held_out_visible_loops"] == 6 and report["held_out_loops_caught"] == 6
    assert report["fit_rate"] <= 0.05
    held = sorted(generations, key=lambda g: (g.time, g.key))[140:]
    healthy = [g for i, g in enumerate(held) if i % 10 != 9]  # generation 140 + i loops when i % 10 == 9
    sink = [s for s in fitted.calibration.signals if s.family == "sink"]
    false_alarms = int((firing(sink, healthy, base.ewma_span, base.persistence) >= 0).sum())
    assert report["held_out_tokens"] == TOKENS * len(healthy) == TOKENS * 54
    assert report["held_out_rate"] == round(1000 * false_alarms / report["held_out_tokens"], 4)
    assert fitted.calibration.notes == report and fitted.calibration.risk is None
    recurrence = next(s for s in fitted.calibration.signals if s.name.endswith(".recurrence"))
    assert recurrence.threshold < 0.999  # below the loops: the dropped loops did not set it
    assert set(fitted.calibration.rank_floors) == {"early", "middle", "late"}
    assert all(6.0 < floor < 12.0 for floor in fitted.calibration.rank_floors.values())


def test_thresholds_follow_the_traffic(tmp_path, base):
    _record(tmp_path / "low", base, 120, recurrence_mean=0.70, seed=1)
    _record(tmp_path / "high", base, 120, recurrence_mean=0.85, seed=1)
    options = TrafficFitOptions(held_out=0.2)
    low = fit_from_traffic(read_recording(tmp_path / "low")[0], base, options).calibration
    high = fit_from_traffic(read_recording(tmp_path / "high")[0], base, options).calibration

    def level(calibration) -> float:
        return next(s.threshold for s in calibration.signals if s.name.endswith(".recurrence"))

    assert level(high) > level(low) + 0.05


def test_the_fitted_calibration_round_trips_and_fires_on_loops_only(tmp_path, base):
    _record(tmp_path, base, 100, loop_every=5, seed=2)
    generations, _ = read_recording(tmp_path)
    fitted = fit_from_traffic(generations, base, TrafficFitOptions(held_out=0.3)).calibration
    path = tmp_path / "traffic.json"
    path.write_text(fitted.to_json())
    loaded = load_calibration(path)
    assert loaded.signals == fitted.signals and loaded.rank_floors == fitted.rank_floors
    loops = [g for i, g in enumerate(generations) if i % 5 == 4]
    fired = firing(loaded.signals, loops, loaded.ewma_span, loaded.persistence)
    assert (fired >= 60).all()  # every loop caught, none before it began


def test_a_recording_from_another_setup_is_refused(tmp_path, base):
    _record(tmp_path, base, 20)
    other = replace(base, bands=(LayerBand("all", (4, 13, 23)),))
    with pytest.raises(SetupMismatch, match="bands"):
        fit_from_traffic(read_recording(tmp_path)[0], other, TrafficFitOptions())


def test_unreadable_lines_and_other_setups_are_left_out_and_counted(tmp_path, base):
    _record(tmp_path, base, 12, seed=3)
    _record(tmp_path / "other", replace(base, window=16), 3, seed=4)
    (tmp_path / "other" / next((tmp_path / "other").glob("*.jsonl")).name).rename(tmp_path / "traffic-9-x-1.jsonl")
    with (tmp_path / "traffic-9-x-1.jsonl").open("a") as segment:
        segment.write('{"version": 1, "cut short by a full di')
    generations, left_out = read_recording(tmp_path)
    assert len(generations) == 12
    assert left_out == {"unreadable": 1, "other_setup": 3}
