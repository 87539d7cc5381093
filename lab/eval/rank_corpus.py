"""Rank exhaustion on a cached corpus: fit the recurrence levels and floors on healthy generations, then
measure how the novel PR behaves in loops and on held-out healthy traffic.

A corpus is a folder under ``~/.cache/sinkwatch/eval/`` with ``manifest.jsonl`` (one generation a line:
``key``, ``split``, ``prompt_set``, ``output_ids``, optionally ``prompt_id`` and ``kind``; other fields are
ignored) and ``arrays/<key>.npz``
(``states`` ``[tokens, layers, d]`` at every layer, ``entropy``). A generation loops when the online text
detector fires on it (:func:`monitors.text.text_sink_onset`); which generations count as healthy is the
caller's choice (``sinkwatch eval rank``: human-written text, and the rest unless it loops or comes from a
sink-inducing prompt set).

Replays the cached teacher-forced states (no model needed) through the served feature extractor: once
with one band per captured layer to read each layer's per-token recurrence, once with the calibrated
bands and levels to read ``<band>.pr_novel`` and the plain ``<band>.pr``.
"""

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.eval.corpus import corpus_dir
from monitors.bands import LayerBand
from monitors.calibration import Calibration, ewma, persistent_extreme
from monitors.features import FeatureExtractor
from monitors.rank_exhaustion import NOVEL_PR, fit_recurrence_levels
from monitors.text import text_sink_onset

__all__ = [
    "CorpusItem",
    "CorpusTracks",
    "band_lows",
    "corpus_tracks",
    "fit_levels",
    "levels_from_states",
    "novel_pr_lows",
    "read_items",
    "replay",
]


@dataclass(frozen=True)
class CorpusItem:
    """One cached generation: where its arrays are, its split, prompt set, prompt and traffic type (``kind``),
    and whether its text loops."""

    key: str
    split: str
    prompt_set: str
    output_ids: tuple[int, ...]
    arrays: Path
    prompt: str
    kind: str

    @property
    def loops(self) -> bool:
        """Whether the online text detector fires on its tokens."""
        return text_sink_onset(list(self.output_ids)) is not None

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """The generation's states (every layer) and next-token entropies."""
        with np.load(self.arrays) as data:
            return data["states"], data["entropy"]


def read_items(corpus: str) -> list[CorpusItem]:
    """Every generation of a cached corpus that has arrays and tokens (prompt: ``prompt_id``, else the key
    before its ``@``; traffic type: ``kind``, else the prompt set)."""
    root = corpus_dir(corpus)
    if not (root / "manifest.jsonl").is_file():
        raise FileNotFoundError(f"corpus {corpus} is not built: sinkwatch eval corpus --corpus {corpus}")
    items = []
    for line in (root / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        path = root / "arrays" / f"{row['key']}.npz"
        if row.get("output_ids") and path.is_file():
            prompt = row.get("prompt_id") or row["key"].split("@")[0]
            kind = row.get("kind") or row["prompt_set"]
            items.append(
                CorpusItem(row["key"], row["split"], row["prompt_set"], tuple(row["output_ids"]), path, prompt, kind)
            )
    return items


@dataclass
class CorpusTracks:
    """Per generation: the item, whether it counts as healthy, and per-token ``<band>.pr`` / ``<band>.pr_novel``
    (NaN where absent)."""

    item: CorpusItem
    healthy: bool
    values: dict[str, np.ndarray]


def replay(
    states: np.ndarray,
    entropy: np.ndarray,
    token_ids: Sequence[int],
    extractor: FeatureExtractor,
    stored_layers: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Per-token features of one generation, NaN before a feature exists or its window is full.

    ``states``: ``[tokens, layers, d]``, at every layer of the model, or at ``stored_layers`` when given.
    """
    rows: dict[str, np.ndarray] = {}
    index = (
        [list(stored_layers).index(layer) for layer in extractor.layers] if stored_layers else list(extractor.layers)
    )
    for t, token in enumerate(token_ids):
        step = extractor.push(states[t, index].astype(np.float64), float(entropy[t]), int(token))
        if step.window < extractor.window:
            continue
        for name, value in step.values.items():
            rows.setdefault(name, np.full(len(token_ids), np.nan))[t] = value
    return rows


def fit_levels(healthy: Sequence[CorpusItem], calibration: Calibration, quantile: float) -> dict[int, float]:
    """Per captured layer, the recurrence level of healthy generations at ``quantile`` (full windows only)."""
    generations = ((*item.load(), item.output_ids) for item in healthy)
    return levels_from_states(generations, calibration.bands, calibration.window, quantile)


def levels_from_states(
    generations: Iterable[tuple[np.ndarray, np.ndarray, Sequence[int]]],
    bands: Sequence[LayerBand],
    window: int,
    quantile: float,
    stored_layers: Sequence[int] | None = None,
) -> dict[int, float]:
    """:func:`fit_levels` from ``(states, entropy, token ids)`` of healthy generations (states at every layer,
    or at ``stored_layers``)."""
    single = tuple(LayerBand(str(layer), (layer,)) for band in bands for layer in band.layers)
    recurrence: dict[int, list[np.ndarray]] = {}
    for states, entropy, token_ids in generations:
        extractor = FeatureExtractor(single, window)
        rows = replay(states, entropy, token_ids, extractor, stored_layers)
        for band in single:
            values = rows.get(f"{band.name}.recurrence")
            if values is not None:
                recurrence.setdefault(band.layers[0], []).append(values[np.isfinite(values)])
    return fit_recurrence_levels({layer: np.concatenate(v) for layer, v in recurrence.items()}, quantile)


def corpus_tracks(
    items: Sequence[CorpusItem],
    calibration: Calibration,
    levels: dict[int, float],
    is_healthy: Callable[[CorpusItem], bool],
    cache: Path | None = None,
) -> list[CorpusTracks]:
    """Every generation's per-band plain and novel PR, and whether it counts as healthy; with ``cache``, each
    generation's replay is kept there under a digest of the bands, window and levels (a rerun with the same
    levels replays only new generations)."""
    tracks = []
    names = [f"{b.name}.{metric}" for b in calibration.bands for metric in ("pr", NOVEL_PR)]
    setting = json.dumps([[b.name, list(b.layers)] for b in calibration.bands] + [calibration.window, levels])
    folder = cache / hashlib.sha256(setting.encode()).hexdigest()[:16] if cache else None
    for item in items:
        path = folder / item.arrays.parent.parent.name / f"{item.key}.npz" if folder else None
        if path and path.is_file():
            with np.load(path) as kept:
                values = {name: kept[name] for name in names}
        else:
            states, entropy = item.load()
            extractor = FeatureExtractor(calibration.bands, calibration.window, recurrence_levels=levels)
            rows = replay(states, entropy, item.output_ids, extractor)
            values = {name: rows.get(name, np.full(len(item.output_ids), np.nan)) for name in names}
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, **values)
        tracks.append(CorpusTracks(item, is_healthy(item), values))
    return tracks


def band_lows(track: CorpusTracks, bands: Sequence[str], span: int, persistence: int) -> dict[str, float]:
    """Per band, the lowest EWMA of the novel PR held for ``persistence`` tokens (the detector's statistic);
    bands whose novel PR is never defined are left out. NaN tokens (all-recurrent windows) are skipped, as
    the detector skips a missing feature."""
    return novel_pr_lows(track.values, bands, span, persistence)


def novel_pr_lows(
    values: Mapping[str, np.ndarray], bands: Sequence[str], span: int, persistence: int
) -> dict[str, float]:
    """:func:`band_lows` of one generation's per-token trajectories (``<band>.pr_novel``, NaN where undefined)."""
    lows = {}
    for band in bands:
        novel = values.get(f"{band}.{NOVEL_PR}")
        novel = novel[np.isfinite(novel)] if novel is not None else np.empty(0)
        low = persistent_extreme(ewma(novel, span), "low", persistence) if len(novel) else float("nan")
        if np.isfinite(low):
            lows[band] = low
    return lows
