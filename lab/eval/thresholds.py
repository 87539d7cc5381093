"""Fit the combined detector on the tune split: each signal's direction, method and alarm level, and which
signals to combine.

Every candidate signal gets a threshold such that a fraction ``q`` of normal generations would fire on it
alone; ``q`` is then lowered until the *union* of the selected signals fires on at most ``target_fpr`` of
normal generations. Signals are chosen by greedy forward selection on the tune split, judged by
cross-validation over prompts: each candidate set is thresholded without one prompt-grouped fold and
applied to it, for every fold, and scored on those out-of-fold firings. At each round the (signal,
method) pair that adds the most out-of-fold credit joins (credit per sink: 1 for catching it, up to 1
more for warning before the text detector, see :func:`detection_credit`), and only if it adds at least
one sink's worth without raising the out-of-fold false alarms: a hidden-state signal is served only where
it adds recall at a fixed false-alarm rate on prompts its thresholds never saw. Every rate ``q`` is also
set on out-of-fold false positives, so the budget holds for normal generations the fit has not seen.
"""

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from lab.eval.dataset import Generation
from lab.eval.scoring import auroc
from monitors.calibration import Direction, Family, SignalThreshold, persistent_extreme, tracked

__all__ = [
    "Selection",
    "alarm_rate",
    "candidate_spec",
    "combine",
    "detection_credit",
    "fold_of",
    "out_of_fold_firing",
    "rank_floor",
    "select_signals",
    "track",
]

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

    def subset(self, keep: Sequence[int]) -> "Track":
        """The same track over the generations at these indices."""
        return Track(self.spec, [self.rolling[i] for i in keep], [self.tokens[i] for i in keep], self.scores[keep])

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
    # Per prompt-grouped fold: the same signals thresholded without that fold's generations.
    fold_signals: dict[int, list[SignalThreshold]]


def fold_of(generation: Generation) -> int:
    """The prompt-grouped cross-fitting fold of a generation."""
    return zlib.crc32(generation.entry.prompt_id.encode()) % CROSS_FIT_FOLDS


def _threshold_at(track_: Track, negatives: np.ndarray, q: float) -> float:
    scores = track_.scores[negatives]
    scores = scores[np.isfinite(scores)]
    return float(np.quantile(scores, 1 - q)) if len(scores) else float("inf")


def _union(tracks: Sequence[Track], negatives: np.ndarray, q: float) -> tuple[np.ndarray, list[float]]:
    thresholds = [_threshold_at(t, negatives, q) for t in tracks]
    firings = np.stack([t.firing(th) for t, th in zip(tracks, thresholds, strict=True)])
    firings = np.where(firings < 0, np.iinfo(np.int64).max, firings).min(axis=0)
    return np.where(firings == np.iinfo(np.int64).max, -1, firings), thresholds


def alarm_rate(
    fired: np.ndarray, generations: Sequence[Generation], negatives: np.ndarray, per_1k_tokens: bool
) -> float:
    """False alarms on the healthy generations: the share that fired, or (``per_1k_tokens``) firings per
    1,000 healthy tokens, the rate that holds as answers grow."""
    if not per_1k_tokens:
        return float(np.mean(fired[negatives]))
    tokens = sum(g.length for g, healthy in zip(generations, negatives, strict=True) if healthy)
    return 1000.0 * float(np.sum(fired[negatives])) / max(tokens, 1)


def _held_out_fpr(
    tracks: Sequence[Track], generations: Sequence[Generation], negatives: np.ndarray, q: float, per_1k_tokens: bool
) -> float:
    """The union's false-positive rate on normal generations, each judged by thresholds set without its
    prompt (``CROSS_FIT_FOLDS`` prompt-grouped folds): what a fresh normal generation will see."""
    fold = np.array([fold_of(g) for g in generations])
    fired = np.zeros(len(generations), dtype=bool)
    for f in range(CROSS_FIT_FOLDS):
        firing, _ = _union(tracks, negatives & (fold != f), q)
        fired |= (fold == f) & (firing >= 0)
    return alarm_rate(fired, generations, negatives, per_1k_tokens)


def combine(
    tracks: Sequence[Track],
    generations: Sequence[Generation],
    target_fpr: float,
    cross_fit: bool = False,
    per_1k_tokens: bool = False,
) -> tuple[np.ndarray, list[float], float]:
    """Per-signal thresholds at a common per-signal rate ``q`` such that the union fires on at most
    ``target_fpr`` of the normal generations (with ``cross_fit``, also when measured out of fold:
    thresholds that are quantiles of the very generations they are checked on promise fewer false alarms
    than they deliver; with ``per_1k_tokens`` the target counts false alarms per 1,000 healthy tokens);
    returns (firing tokens, thresholds, in-sample union false-alarm rate)."""
    negatives = np.array([g.healthy for g in generations])
    low, high = 0.0, 0.5 if per_1k_tokens else target_fpr
    best = _union(tracks, negatives, 0.0)
    for _ in range(12):
        q = (low + high) / 2
        firing, thresholds = _union(tracks, negatives, q)
        rate = alarm_rate(firing >= 0, generations, negatives, per_1k_tokens)
        if cross_fit:
            rate = max(rate, _held_out_fpr(tracks, generations, negatives, q, per_1k_tokens))
        if rate <= target_fpr:
            low, best = q, (firing, thresholds)
        else:
            high = q
    firing, thresholds = best
    return firing, thresholds, alarm_rate(firing >= 0, generations, negatives, per_1k_tokens)


def out_of_fold_firing(
    tracks: Sequence[Track], generations: Sequence[Generation], target_fpr: float, per_1k_tokens: bool
) -> np.ndarray:
    """Each generation's firing token (-1: never) under the union thresholded, as :func:`combine` does, on
    the other prompt-grouped folds only: what the detector does on prompts its thresholds never saw."""
    fold = np.array([fold_of(g) for g in generations])
    out = np.full(len(generations), -1)
    for f in range(CROSS_FIT_FOLDS):
        keep, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if not len(held):
            continue
        kept = [generations[i] for i in keep]
        _, thresholds, _ = combine([t.subset(keep) for t in tracks], kept, target_fpr, True, per_1k_tokens)
        firings = np.stack([t.subset(held).firing(th) for t, th in zip(tracks, thresholds, strict=True)])
        firings = np.where(firings < 0, np.iinfo(np.int64).max, firings).min(axis=0)
        out[held] = np.where(firings == np.iinfo(np.int64).max, -1, firings)
    return out


def detection_credit(firing: np.ndarray, generations: Sequence[Generation]) -> tuple[float, int, float]:
    """Credit per sink: 1 for catching it, plus up to 1 more for warning early (lead over the text detector
    clipped to ±LEAD_CLIP, scaled to ±1; a sink the text detector never flags earns the full 2).
    Returns (credit, sinks caught, median lead on visible sinks)."""
    credit, caught, leads = 0.0, 0, []
    for fire, g in zip(firing, generations, strict=True):
        if not g.label.sink or fire < 0:
            continue
        caught += 1
        if g.label.kind == "visible" and g.label.onset is not None:
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
    per_1k_tokens: bool = False,
    required: Sequence[str] = (),
) -> Selection:
    """Greedy forward selection of the combined detector's signals, judged out of fold (see the module
    docstring); ``required`` signals are in from the start (each with its tracking of fewest out-of-fold
    false alarms, then most credit), the others join only if they add at least ``MIN_GAIN`` out-of-fold
    credit without adding out-of-fold false alarms."""
    tracks = {(c.name, c.method, c.span, c.persistence): track(c, generations, span, persistence) for c in candidates}
    negatives = np.array([g.healthy for g in generations])

    def judged(keys: list[tuple]) -> tuple[float, float]:
        firing = out_of_fold_firing([tracks[k] for k in keys], generations, target_fpr, per_1k_tokens)
        alarms = alarm_rate(firing >= 0, generations, negatives, per_1k_tokens)
        return alarms, detection_credit(firing, generations)[0]

    chosen: list[tuple] = []
    alarms, credit = np.inf, -np.inf
    while len(chosen) < max_signals:
        pending = [name for name in required if all(name != other[0] for other in chosen)]
        options = [
            (judged([*chosen, key]), key)
            for key in tracks
            if not any(key[0] == other[0] for other in chosen) and (not pending or key[0] == pending[0])
        ]
        if pending:
            (alarms, credit), key = min(options, key=lambda o: (o[0][0], -o[0][1]))
        else:
            adding = [o for o in options if o[0][0] <= alarms and o[0][1] >= credit + MIN_GAIN]
            if not adding:
                break
            (alarms, credit), key = max(adding, key=lambda o: o[0][1])
        chosen.append(key)
    selected = [tracks[k] for k in chosen]
    firing, thresholds, fpr = combine(selected, generations, target_fpr, True, per_1k_tokens)
    _, caught, lead = detection_credit(firing, generations)
    signals = [replace(t.spec, threshold=t.oriented(th)) for t, th in zip(selected, thresholds, strict=True)]
    fold_signals = {}
    for f in range(CROSS_FIT_FOLDS):
        keep = [i for i, g in enumerate(generations) if fold_of(g) != f]
        kept = [generations[i] for i in keep]
        _, fold_thresholds, _ = combine([t.subset(keep) for t in selected], kept, target_fpr, False, per_1k_tokens)
        fold_signals[f] = [
            replace(t.spec, threshold=t.oriented(th)) for t, th in zip(selected, fold_thresholds, strict=True)
        ]
    return Selection(signals, fpr, caught, sum(g.label.sink for g in generations), lead, fold_signals)


def rank_floor(name: str, generations: Sequence[Generation], span: int, persistence: int, fpr: float) -> float:
    """The PR level that at most ``fpr`` of normal generations hold (smoothed) for ``persistence`` tokens
    (NaN when no normal generation has the signal)."""
    negatives = [g for g in generations if g.healthy]
    spec = SignalThreshold(name, "low", float("nan"), "rank")
    extremes = [
        persistent_extreme(tracked(v[np.isfinite(v)], spec, span), "low", persistence)
        for v in (g.values(name) for g in negatives)
        if np.isfinite(v).sum() >= persistence
    ]
    return float(np.quantile(extremes, fpr)) if extremes else float("nan")
