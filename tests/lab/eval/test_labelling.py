"""``sinkwatch eval label``: shows each generation, records the labeller's label and note, skips and stops."""

import json
import subprocess
import sys

from lab.eval.corpus import CorpusEntry
from lab.eval.labelling import label_interactively, show
from lab.eval.labels import label_production, load_rubric_labels


def entry(key: str, text: str, kind: str = "code") -> CorpusEntry:
    return CorpusEntry(
        key, key.split("@")[0], "production", "test", "t0.7", 0.7, 1.0, [1], [5, 6, 7], text, "stop", kind
    )


def test_each_generation_is_shown_and_its_label_and_note_recorded(tmp_path):
    path = tmp_path / "labels.jsonl"
    answers = iter(["x", "l", "repeats the same sentence", "s", "healthy", "fine", "q"])
    shown: list[str] = []
    entries = [entry("a@t0.7", "again again again"), entry("b@t0.7", "skipped"), entry("c@t0.7", "def f(): ...")]
    views = [(e.key, show(e)) for e in [*entries, entry("d@t0.7", "left unlabelled")]]
    recorded = label_interactively(views, lambda _: next(answers), shown.append, path)
    assert recorded == 2
    labels = load_rubric_labels(path)
    assert {k: (v.label, v.note) for k, v in labels.items()} == {
        "a@t0.7": ("loop", "repeats the same sentence"),
        "c@t0.7": ("healthy", "fine"),
    }
    assert any("unknown label 'x'" in line for line in shown)
    assert any("again again again" in line for line in shown)
    assert any("d@t0.7" in line for line in shown)  # shown, then "q": stopped without a label


def test_the_command_records_one_label_and_the_last_label_of_a_key_wins(tmp_path):
    path = tmp_path / "labels.jsonl"
    for label in ("loop", "incoherent"):
        command = [sys.executable, "-m", "gateway.cli", "eval", "label", "--labels", str(path), "--key", "k@greedy"]
        subprocess.run([*command, "--label", label, "--note", "n"], check=True, capture_output=True)
    assert load_rubric_labels(path)["k@greedy"].label == "incoherent"


def _score(case: str, rescued: bool, text: str) -> dict:
    return {
        "case": case,
        "inducer": "frequency_penalty",
        "kind": "code",
        "rescued": rescued,
        "neutralised": ["frequency_penalty"] if rescued else [],
        "completion_tokens": 40,
        "text": text,
    }


def test_the_rescued_answers_of_a_rescue_run_are_shown_and_labelled_under_the_run_s_name(tmp_path):
    results = tmp_path / "rescue-run.json"
    scores = [_score("p1@greedy-freq-1.0", True, "def add(a, b): return a + b"), _score("p2@x", False, "blocked")]
    results.write_text(json.dumps({"per_strategy": {"combined": scores}}))
    labels = tmp_path / "rescue_labels.jsonl"
    command = [sys.executable, "-m", "gateway.cli", "eval", "label", "--rescue", str(results), "--labels", str(labels)]
    shown = subprocess.run(command, input="h\nanswers the request\n", capture_output=True, text=True, check=True)
    assert "1 generations to label" in shown.stdout
    assert "def add(a, b)" in shown.stdout and "neutralised frequency_penalty" in shown.stdout
    assert "blocked" not in shown.stdout
    recorded = load_rubric_labels(labels)
    assert {k: (v.label, v.note) for k, v in recorded.items()} == {
        "rescue-run:p1@greedy-freq-1.0": ("healthy", "answers the request")
    }
    again = subprocess.run(command, input="q\n", capture_output=True, text=True, check=True)
    assert "0 generations to label" in again.stdout


def test_hand_labels_map_to_the_evaluation_labels(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text(
        '{"key": "a", "label": "loop", "note": ""}\n{"key": "b", "label": "incoherent", "note": ""}\n'
        '{"key": "c", "label": "healthy", "note": ""}\n{"key": "d", "label": "bland", "note": ""}\n'
    )
    rubric = load_rubric_labels(path)
    loop = [1, 2, 3, 4, 5] * 10
    assert label_production("a", "code", loop, rubric).kind == "visible"
    assert label_production("a", "code", loop, rubric).onset is not None
    assert label_production("b", "code", loop, rubric) is None
    assert label_production("c", "code", loop, rubric).kind == "negative"
    assert label_production("d", "list", [1, 2], rubric).kind == "bland"
    assert label_production("e", "list", [1, 2], rubric) is None
    assert label_production("e", "human_code", loop, rubric).kind == "negative"
