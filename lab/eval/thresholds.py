"""Fit the combined detector on the tune split: each signal's direction, method and alarm level, and which
signals to combine.

Every candidate signal gets a threshold such that a fraction ``q`` of normal generations would fire on it
alone; ``q`` is then lowered until the *union* of the selected signals fires on at most ``target_fpr`` of
normal generations. Signals are chosen by greedy forward selection on the tune split: at each round the
(signal, method) pair that adds the most credit joins (credit per sink: 1 for catching it, up to 1 more
for warning before the text detector, see :func:`detection_credit`). The final rate ``q`` is set on
out-of-fold false positives, so the budget holds for normal generations the fit has not seen.
"""

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from lab.eval.dataset import Generation
from lab.eval.scoring import auroc
from monitors.calibration import Direction, Family, SignalThreshold, persistent_extreme, tracked

__all__ = ["Selection", "candidate_spec", "combine", "detection_credit", "rank_floor", "select_signals", "track"]

LEAD_CLIP = 32
CROSS_FIT_FOLDS = 5
MIN_GAIN = 1.0  # a signal joins only if it adds at least one sink's worth of credit


@dataclass
class Track:
    """A signal (without threshold yet) tracked over many generations, oriented so that higher is worse."""

    spec: SignalThreshold
    rolling: list[np.ndarray]
    tokens: list[np.ndarray]
    scores: np.ndarray

    def firing(self, threshold: float) -> np.ndarray:
        """Per generation: the token at which the detector fires for this oriented threshold (-1 if never)."""
        out = np.full(len(self.rolling), -1)
        for i, (rolling, tokens) in enumerate(zip(self.rolling, self.tokens, strict=True)):
            hits = np.flatnonzero(rolling > threshold)
            if len(hits):
                out[i] = tokens[hits[0]]
        return out

    def oriented(self, threshold: float) -> float:
        """Oriented threshold back to the spec's scale."""
        return -threshold if self.spec.method == "ewma" and self.spec.direction == "low" else threshold


def track(spec: SignalThreshold, generations: Sequence[Generation], span: int, persistence: int) -> Track:
    """Tracked statistic of ``spec`` on every generation, as a rolling worst over ``persistence`` tokens
    (the signal's own span and persistence when it has them)."""
    persistence = spec.persistence or persistence
    rolling, tokens, scores = [], [], []
    for g in generations:
        values = g.values(spec.name)
        defined = np.flatnonzero(np.isfinite(values))
        if len(defined) < persistence:
            rolling.append(np.empty(0))
            tokens.append(np.empty(0, dtype=int))
            scores.append(-np.inf)
            continue
        statistic = tracked(values[defined], spec, span)
        if spec.method == "ewma" and spec.direction == "low":
            statistic = -statistic
        windows = np.lib.stride_tricks.sliding_window_view(statistic, persistence).min(axis=1)
        rolling.append(windows)
        tokens.append(defined[persistence - 1 :])
        scores.append(float(windows.max()))
    return Track(spec, rolling, tokens, np.asarray(scores))


def signal_direction(name: str, generations: Sequence[Generation]) -> Direction:
    """Which side is abnormal, from the tune split: the side on which sinks' mean values lie."""
    means = {id(g): np.nanmean(g.values(name)) if np.isfinite(g.values(name)).any() else np.nan for g in generations}
    sinks = [means[id(g)] for g in generations if g.label.sink]
    normal = [means[id(g)] for g in generations if not g.label.sink]
    return "high" if auroc(sinks, normal) >= 0.5 else "low"


def candidate_spec(
    name: str, family: Family, method: str, tune: Sequence[Generation], negatives: Sequence[Generation]
) -> SignalThreshold:
    """A signal's spec without its threshold: direction from the tune split, normal mean/std from negatives."""
    values = np.concatenate([g.values(name)[np.isfinite(g.values(name))] for g in negatives])
    return SignalThreshold(
        name,
        signal_direction(name, tune),
        float("nan"),
        family,
        method=method,
        mean=float(values.mean()),
        std=float(values.std() + 1e-9),
    )


@dataclass
class Selection:
    """The chosen signals with thresholds, and how they did on the tune split."""

    signals: list[SignalThreshold]
    fpr: float
    caught: int
    sinks: int
    median_lead: float


def _threshold_at(track_: Track, negatives: np.ndarray, q: float) -> float:
    scores = track_.scores[negatives]
    scores = scores[np.isfinite(scores)]
    return float(np.quantile(scores, 1 - q)) if len(scores) else float("inf")


def _union(tracks: Sequence[Track], negatives: np.ndarray, q: float) -> tuple[np.ndarray, list[float]]:
    thresholds = [_threshold_at(t, negatives, q) for t in tracks]
    firings = np.stack([t.firing(th) for t, th in zip(tracks, thresholds, strict=True)])
    firings = np.where(firings < 0, np.iinfo(np.int64).max, firings).min(axis=0)
    return np.where(firings == np.iinfo(np.int64).max, -1, firings), thresholds


def _held_out_fpr(tracks: Sequence[Track], generations: Sequence[Generation], negatives: np.ndarray, q: float) -> float:
    """The union's false-positive rate on normal generations, each judged by thresholds set without its
    prompt (``CROSS_FIT_FOLDS`` prompt-grouped folds): what a fresh normal generation will see."""
    fold = np.array([zlib.crc32(g.entry.prompt_id.encode()) % CROSS_FIT_FOLDS for g in generations])
    fired = np.zeros(len(generations), dtype=bool)
    for f in range(CROSS_FIT_FOLDS):
        firing, _ = _union(tracks, negatives & (fold != f), q)
        fired |= (fold == f) & (firing >= 0)
    return float(np.mean(fired[negatives]))


def combine(
    tracks: Sequence[Track], generations: Sequence[Generation], target_fpr: float, cross_fit: bool = False
) -> tuple[np.ndarray, list[float], float]:
    """Per-signal thresholds at a common per-signal rate ``q`` such that the union fires on at most
    ``target_fpr`` of the normal generations (with ``cross_fit``, also when measured out of fold:
    thresholds that are quantiles of the very generations they are checked on promise fewer false alarms
    than they deliver); returns (firing tokens, thresholds, in-sample union FPR)."""
    negatives = np.array([g.entry.prompt_set == "normal" and not g.label.sink for g in generations])
    low, high = 0.0, target_fpr
    best = _union(tracks, negatives, 0.0)
    for _ in range(12):
        q = (low + high) / 2
        firing, thresholds = _union(tracks, negatives, q)
        rate = np.mean(firing[negatives] >= 0)
        if cross_fit:
            rate = max(rate, _held_out_fpr(tracks, generations, negatives, q))
        if rate <= target_fpr:
            low, best = q, (firing, thresholds)
        else:
            high = q
    firing, thresholds = best
    return firing, thresholds, float(np.mean(firing[negatives] >= 0))


def detection_credit(firing: np.ndarray, generations: Sequence[Generation]) -> tuple[float, int, float]:
    """Credit per sink: 1 for catching it, plus up to 1 more for warning early (lead over the text detector
    clipped to ±LEAD_CLIP, scaled to ±1; a bland sink, which the text detector never flags, earns the full 2).
    Returns (credit, sinks caught, median lead on visible sinks)."""
    credit, caught, leads = 0.0, 0, []
    for fire, g in zip(firing, generations, strict=True):
        if not g.label.sink or fire < 0:
            continue
        caught += 1
        if g.label.kind == "visible":
            lead = float(g.label.onset - fire)
            leads.append(lead)
            credit += 1.0 + float(np.clip(lead, -LEAD_CLIP, LEAD_CLIP)) / LEAD_CLIP
        else:
            credit += 2.0
    return credit, caught, float(np.median(leads)) if leads else float("nan")


def select_signals(
    candidates: Sequence[SignalThreshold],
    generations: Sequence[Generation],
    span: int,
    persistence: int,
    target_fpr: float,
    max_signals: int,
) -> Selection:
    """Greedy forward selection of the combined detector's signals on the tune split."""
    tracks = {(c.name, c.method, c.span, c.persistence): track(c, generations, span, persistence) for c in candidates}
    chosen: list[tuple] = []
    best_value = -np.inf
    while len(chosen) < max_signals:
        round_best = None
        for key in tracks:
            if any(key[0] == other[0] for other in chosen):
                continue
            firing, _, _ = combine([tracks[k] for k in [*chosen, key]], generations, target_fpr)
            value = detection_credit(firing, generations)[0]
            if round_best is None or value > round_best[0]:
                round_best = (value, key)
        if round_best is None or round_best[0] < best_value + MIN_GAIN:
            break
        best_value = round_best[0]
        chosen.append(round_best[1])
    selected = [tracks[k] for k in chosen]
    firing, thresholds, fpr = combine(selected, generations, target_fpr, cross_fit=True)
    _, caught, lead = detection_credit(firing, generations)
    signals = [replace(t.spec, threshold=t.oriented(th)) for t, th in zip(selected, thresholds, strict=True)]
    return Selection(signals, fpr, caught, sum(g.label.sink for g in generations), lead)


def rank_floor(name: str, generations: Sequence[Generation], span: int, persistence: int, fpr: float) -> float:
    """The PR level that at most ``fpr`` of normal generations hold (smoothed) for ``persistence`` tokens
    (NaN when no normal generation has the signal)."""
    negatives = [g for g in generations if g.entry.prompt_set == "normal" and not g.label.sink]
    spec = SignalThreshold(name, "low", float("nan"), "rank")
    extremes = [
        persistent_extreme(tracked(v[np.isfinite(v)], spec, span), "low", persistence)
        for v in (g.values(name) for g in negatives)
        if np.isfinite(v).sum() >= persistence
    ]
    return float(np.quantile(extremes, fpr)) if extremes else float("nan")
