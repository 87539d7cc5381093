"""The labelled corpus as the evaluation sees it: each generation with its label and signal trajectories."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from lab.eval.corpus import PRODUCTION_CONDITIONS, CorpusEntry, conditions_of, load_arrays, read_manifest
from lab.eval.labels import Label, label_generation, label_production, load_bland_labels, load_rubric_labels
from lab.eval.signals import (
    Reference,
    Sampling,
    baseline_trajectories,
    hidden_state_trajectories,
    offline_trajectories,
)

__all__ = ["Generation", "build_generations", "healthy_traffic", "labelled_entries"]

# Prompt sets whose healthy generations are the false-alarm set (the v1 loop and bland sets are not traffic).
TRAFFIC_SETS = ("normal", *PRODUCTION_CONDITIONS)


@dataclass
class Generation:
    """One labelled generation and the per-token trajectory of every signal."""

    entry: CorpusEntry
    label: Label
    trajectories: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.entry.output_ids)

    @property
    def healthy(self) -> bool:
        """A healthy generation of ordinary traffic: where a firing is a false alarm."""
        return healthy_traffic(self.entry, self.label)

    def values(self, name: str) -> np.ndarray:
        """A signal's trajectory; all NaN when the signal was never defined (e.g. shorter than the window)."""
        return self.trajectories.get(name, np.full(self.length, np.nan))


def healthy_traffic(entry: CorpusEntry, label: Label) -> bool:
    """Whether a labelled generation is healthy ordinary traffic."""
    return entry.prompt_set in TRAFFIC_SETS and not label.sink


def labelled_entries(corpus: str) -> list[tuple[CorpusEntry, Label]]:
    """Every corpus generation that has a label (see :mod:`lab.eval.labels`)."""
    production = conditions_of(corpus) is PRODUCTION_CONDITIONS
    bland, rubric = load_bland_labels(), load_rubric_labels()
    out = []
    for entry in read_manifest(corpus):
        if production:
            label = label_production(entry.key, entry.kind, entry.output_ids, rubric)
        else:
            label = label_generation(entry.key, entry.prompt_set, entry.output_ids, bland)
        if label is not None and entry.output_ids:
            out.append((entry, label))
    return out


def build_generations(
    entries: Iterable[tuple[CorpusEntry, Label]],
    corpus: str,
    sampling: Sampling,
    reference: Reference,
    offline: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Load each generation's arrays and compute its trajectories (hidden-state, baselines, offline levers)."""
    generations = []
    for i, (entry, label) in enumerate(entries):
        arrays = load_arrays(entry, corpus)
        entropy = arrays["entropy"].astype(np.float64)
        trajectories = hidden_state_trajectories(arrays["states"], entropy, entry.output_ids, sampling, reference)
        trajectories.update(baseline_trajectories(entry.output_ids, entropy))
        if offline:
            trajectories.update(offline_trajectories(arrays, entropy))
        generations.append(Generation(entry, label, trajectories))
        if progress is not None:
            progress(i)
    return generations


def split(generations: list[Generation], name: str) -> list[Generation]:
    """Generations of prompts in one split."""
    return [g for g in generations if g.entry.split == name]
