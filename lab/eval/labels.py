"""Labels of the evaluation corpus: which generations sink, how, and from which token.

- **visible sink**: the online text detector of METRICS.md fires (at least half of the last 16 tokens
  close a repeated 4-gram); its onset is the first token where it fires.
- **bland sink**: a generation judged generic, evasive or content-free *without* repeating, by the
  hand-checked set ``monitors/data/bland_labels.jsonl`` (rule in docs/EVALUATION.md). No onset.
- **negative**: neither. Hand-checked generations judged not bland are negatives too; generations of
  the bland prompt set that were not hand-checked are left out, since nobody knows what they are.
"""

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from monitors.text import RepetitionTracker, text_sink_onset

__all__ = ["Label", "label_generation", "load_bland_labels", "repetition_trajectory"]


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
