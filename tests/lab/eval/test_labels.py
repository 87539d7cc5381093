"""Corpus labels: the text detector's onset and the hand-checked bland set."""

import json

from lab.eval.labels import label_generation, load_bland_labels
from monitors.text import text_sink_onset


def test_text_onset_is_where_half_of_the_last_16_tokens_close_a_repeated_4gram():
    loop = [1, 2, 3, 4, 5] * 10
    onset = text_sink_onset(loop)
    assert onset is not None
    assert text_sink_onset(list(range(60))) is None
    assert text_sink_onset(loop[:onset]) is None


def test_labels_follow_the_documented_rule(tmp_path):
    path = tmp_path / "bland.jsonl"
    path.write_text(json.dumps({"key": "a", "bland": True}) + "\n" + json.dumps({"key": "b", "bland": False}) + "\n")
    bland = load_bland_labels(path)
    fresh = list(range(40))
    assert label_generation("x", "loop", [7, 8, 9, 10] * 12, bland).kind == "visible"
    assert label_generation("a", "bland", fresh, bland).kind == "bland"
    assert label_generation("b", "bland", fresh, bland).kind == "negative"
    assert label_generation("c", "bland", fresh, bland) is None
    assert label_generation("d", "normal", fresh, bland).kind == "negative"


def test_the_committed_bland_labels_are_well_formed():
    labels = load_bland_labels()
    assert labels, "monitors/data/bland_labels.jsonl must hold the hand-checked set"
    assert any(labels.values()) and not all(labels.values())
