"""The stressors' per-level cache: a level measured once is read back, and ``cached_only`` reports only
what is cached (a budgeted run fills the cache in pieces); whether the verdict fires on a measured answer."""

import pickle
from types import SimpleNamespace

import numpy as np

from lab.eval.rank_stress import (
    WINDOW,
    Measured,
    answer_fires,
    context_windows,
    replay_tail,
    run_stressors,
    window_end,
)
from monitors.bands import LayerBand


def test_cached_levels_are_read_back_and_missing_ones_left_out_when_cached_only(tmp_path):
    unstressed = [Measured("constraints", 0, "facts", True, np.zeros((40, 6, 8)), list(range(40)))]
    (tmp_path / "constraints-0.pkl").write_bytes(pickle.dumps(unstressed))
    levels = {"constraints": [0, 50], "temperature": [0, 1.8], "precision": [32, 8]}
    nothing_loaded = SimpleNamespace(name="unused")
    measured = run_stressors(nothing_loaded, levels, 12, 10, tmp_path, cached_only=True, progress=str)
    assert [(m.stressor, m.level) for m in measured] == [("constraints", 0), ("temperature", 0), ("precision", 32)]
    assert run_stressors(nothing_loaded, levels, 12, 10, tmp_path / "empty", cached_only=True) == []
    assert not (tmp_path / "empty").exists()
    assert context_windows(None, "text", 8192, tmp_path, cached_only=True) == []


def test_the_unstressed_answers_serve_as_greedy_and_float32(tmp_path):
    unstressed = [Measured("constraints", 0, "facts", True, np.zeros((40, 6, 8)), list(range(40)))]
    (tmp_path / "constraints-0.pkl").write_bytes(pickle.dumps(unstressed))
    nothing_loaded = SimpleNamespace(name="unused")  # relabelled levels never touch the model
    measured = run_stressors(nothing_loaded, {"temperature": [0], "precision": [32]}, 12, 10, tmp_path, progress=str)
    assert [(m.stressor, m.level, m.correct) for m in measured] == [("temperature", 0, True), ("precision", 32, True)]
    assert (tmp_path / "temperature-0.pkl").is_file() and (tmp_path / "precision-32.pkl").is_file()


def test_the_verdict_fires_on_an_answer_whose_tracked_novel_pr_holds_below_a_floor_for_its_persistence():
    rng = np.random.default_rng(0)
    bands = (LayerBand("late", (1,)),)
    states = rng.normal(size=(WINDOW + 12, 1, 16))  # 32 prompt states, then 12 answer states
    measured = Measured("constraints", 50, "facts", True, states, list(range(WINDOW + 12)))
    levels = {1: 0.999}  # nothing recurs: every state is novel, the novel PR is defined at every answer token
    rows = replay_tail(bands, measured, levels)
    novel, _ = window_end(bands, rows)
    assert 4.0 < novel["late"] < 16.0
    assert answer_fires(bands, rows, {"late": 100.0}, (8, 4))
    assert not answer_fires(bands, rows, {"late": 1.0}, (8, 4))
    assert answer_fires(bands, rows, {"late": 100.0}, (8, 12))
    assert not answer_fires(bands, rows, {"late": 100.0}, (8, 13))  # the answer has 12 tokens only
