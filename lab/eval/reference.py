"""Fit what the monitors must know about the model's normal states: mean states, outlier dimensions, probe.

Everything here is fitted on the tune split only.
"""

import zlib
from collections.abc import Sequence

import numpy as np

from lab.eval.corpus import CorpusEntry, load_arrays
from lab.eval.dataset import healthy_traffic
from lab.eval.labels import Label
from lab.eval.signals import Reference
from monitors.probe import train_probe

__all__ = ["fit_reference"]


def probe_targets(label: Label, length: int, horizon: int) -> np.ndarray:
    """Per-token probe labels: 1 from ``horizon`` tokens before a visible sink's onset, 1 throughout a bland
    sink or a hand-labelled loop the text detector never dates, 0 elsewhere."""
    y = np.zeros(length)
    if label.kind == "visible" and label.onset is not None:
        y[max(0, label.onset - horizon) :] = 1.0
    elif label.sink:
        y[:] = 1.0
    return y


def fit_reference(
    entries: Sequence[tuple[CorpusEntry, Label]],
    corpus: str,
    probe_layers: Sequence[int],
    horizon: int,
    outlier_share: float,
    l2: float,
    projection: np.ndarray | None = None,
    folds: int = 5,
) -> tuple[Reference, dict[str, np.ndarray]]:
    """Mean states and outlier dimensions from the normal-prompt negatives; the probe from every entry.

    Also returns out-of-fold probe logits per generation key (``folds`` probes, each trained without one
    fold of prompts), so that thresholds on the probe are set on scores it did not train on. With
    ``projection`` the probe reads projected states and no outlier dimensions are set (a projection mixes
    them).
    """
    sums, squares, count = None, None, 0
    probe_x, probe_y = [], []
    for entry, label in entries:
        states = load_arrays(entry, corpus)["states"].astype(np.float64)
        if healthy_traffic(entry, label):
            sums = states.sum(axis=0) if sums is None else sums + states.sum(axis=0)
            squares = (states**2).sum(axis=0) if squares is None else squares + (states**2).sum(axis=0)
            count += len(states)
        x = states[:, list(probe_layers)]
        if projection is not None:
            x = x @ projection
        probe_x.append(x.astype(np.float32))
        probe_y.append(probe_targets(label, len(states), horizon))
    if sums is None:
        raise ValueError("no normal generation to fit the reference on")
    means = sums / count
    share = squares / squares.sum(axis=1, keepdims=True)
    outliers = {} if projection is not None else _outlier_dims(share, outlier_share)
    if projection is not None:
        means = means @ projection
    probe, out_of_fold = None, {}
    if _trainable(probe_y):
        probe = train_probe(probe_x, probe_y, probe_layers, l2, horizon)
        fold_of = [zlib.crc32(entry.prompt_id.encode()) % folds for entry, _ in entries]
        for fold in range(folds):
            train = [i for i, f in enumerate(fold_of) if f != fold]
            held = [i for i, f in enumerate(fold_of) if f == fold]
            if not held or not _trainable([probe_y[i] for i in train]):
                continue
            fold_probe = train_probe(
                [probe_x[i] for i in train], [probe_y[i] for i in train], probe_layers, l2, horizon
            )
            for i in held:
                out_of_fold[entries[i][0].key] = fold_probe.score(probe_x[i])
    reference = Reference(dict(enumerate(means)), outliers, probe, projection)
    return reference, out_of_fold


def _trainable(labels: Sequence[np.ndarray]) -> bool:
    return any(y.any() for y in labels) and not all(y.all() for y in labels)


def _outlier_dims(share: np.ndarray, threshold: float) -> dict[int, list[int]]:
    """Per layer, the dimensions holding more than ``threshold`` of the mean squared norm."""
    return {layer: [int(d) for d in np.flatnonzero(row > threshold)] for layer, row in enumerate(share)}
