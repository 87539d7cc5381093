"""Labels of the evaluation corpus: which generations sink, how, and from which token.

- **visible sink**: the online text detector of METRICS.md fires (at least half of the last 16 tokens
  close a repeated 4-gram); its onset is the first token where it fires.
- **bland sink**: a generation judged generic, evasive or content-free *without* repeating, by the
  hand-checked set ``monitors/data/bland_labels.jsonl`` (rule in docs/EVALUATION.md). No onset.
- **negative**: neither. Hand-checked generations judged not bland are negatives too; generations of
  the bland prompt set that were not hand-checked are left out, since nobody knows what they are.

The production-like corpus (``production-v1``) is labelled by hand against the rubric of
docs/EVALUATION.md ("Verdicts"): ``healthy``, ``loop`` (a visible loop), ``bland`` or ``incoherent``, one
line per generation with a note in ``monitors/data/verdict_labels.jsonl`` (``sinkwatch eval label``).
Human-written documents are healthy by construction. A loop's onset is still the text detector's firing
token (None when it never fires); incoherent and unlabelled generations are left out.
"""

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from monitors.text import RepetitionTracker, text_sink_onset

__all__ = [
    "HUMAN_KINDS",
    "RUBRIC",
    "Label",
    "RubricLabel",
    "label_generation",
    "label_production",
    "load_bland_labels",
    "load_rubric_labels",
    "record_rubric_label",
    "repetition_trajectory",
    "rescue_labels_path",
    "rubric_labels_path",
]

RUBRIC = ("healthy", "loop", "bland", "incoherent")
HUMAN_KINDS = ("human_code", "human_docs")


@dataclass(frozen=True)
class Label:
    """``kind`` is ``visible``, ``bland`` or ``negative``; ``onset`` is the text detector's firing token."""

    kind: str
    onset: int | None = None

    @property
    def sink(self) -> bool:
        return self.kind != "negative"


def repetition_trajectory(token_ids: list[int]) -> np.ndarray:
    """The text detector's statistic after every token."""
    tracker = RepetitionTracker()
    return np.array([tracker.push(t) for t in token_ids])


def bland_labels_path() -> Path:
    """The committed hand-checked labels of bland generations."""
    return Path(str(resources.files("monitors") / "data" / "bland_labels.jsonl"))


def load_bland_labels(path: Path | None = None) -> dict[str, bool]:
    """``generation key -> is bland`` for every hand-checked generation."""
    path = path or bland_labels_path()
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["key"]: bool(row["bland"]) for row in rows}


@dataclass(frozen=True)
class RubricLabel:
    """A hand label of one generation by the rubric, with the labeller's note."""

    key: str
    label: str
    note: str = ""


def rubric_labels_path() -> Path:
    """The committed hand labels of the production-like corpus."""
    return Path(str(resources.files("monitors") / "data" / "verdict_labels.jsonl"))


def rescue_labels_path() -> Path:
    """The committed hand labels of rescued answers (key ``<results file stem>:<case>``)."""
    return Path(str(resources.files("monitors") / "data" / "rescue_labels.jsonl"))


def load_rubric_labels(path: Path | None = None) -> dict[str, RubricLabel]:
    """``generation key -> label`` (the last line for a key wins: relabelling appends)."""
    path = path or rubric_labels_path()
    if not path.is_file():
        return {}
    rows = [RubricLabel(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return {row.key: row for row in rows}


def record_rubric_label(label: RubricLabel, path: Path | None = None) -> None:
    """Append one hand label."""
    if label.label not in RUBRIC:
        raise ValueError(f"label must be one of {', '.join(RUBRIC)}, not {label.label!r}")
    path = path or rubric_labels_path()
    with path.open("a") as out:
        out.write(json.dumps({"key": label.key, "label": label.label, "note": label.note}) + "\n")


def label_production(key: str, kind: str, token_ids: list[int], rubric: dict[str, RubricLabel]) -> Label | None:
    """The label of one production-like generation: human documents are healthy; others by hand label."""
    if kind in HUMAN_KINDS:
        return Label("negative")
    hand = rubric.get(key)
    if hand is None or hand.label == "incoherent":
        return None
    if hand.label == "loop":
        return Label("visible", text_sink_onset(token_ids))
    return Label("bland" if hand.label == "bland" else "negative")


def label_generation(key: str, prompt_set: str, token_ids: list[int], bland: dict[str, bool]) -> Label | None:
    """The label of one generation, or None when it cannot be labelled (unchecked bland-set output)."""
    onset = text_sink_onset(token_ids)
    if onset is not None:
        return Label("visible", onset)
    if key in bland:
        return Label("bland" if bland[key] else "negative")
    if prompt_set == "bland":
        return None
    return Label("negative")
