"""Rank floors on healthy traffic, measured sceptically.

The tune split's healthy generations choose the persistence (tokens the tracked novel PR must hold below
the floor) and the rate the floors are fitted at, by cross-validation over prompts: every generation of a
prompt (its greedy and sampled answers) sits in the same fold, floors are fitted on the other folds with
:func:`monitors.rank_exhaustion.fit_rank_floors` and the held-out fold's generations are counted. The
chosen pair is the one whose cross-validated false-alarm rate comes closest to the target without passing
it (the most sensitive floors that hold the target), the smaller persistence on a tie. The floors are then
fitted on the whole tune split and the rate is read once on the test split, which no choice looked at:
overall with a Wilson interval, per traffic type and per generation length, per generation and per 1,000
tokens. A rule that judges every window alike fires more often on longer generations at the same rate per
token; whether long generations fire for their length or for their content is read by judging them on their
first :data:`HEAD_TOKENS` tokens only (``long_head``).
"""

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lab.eval.rank_corpus import CorpusTracks, band_lows, novel_pr_lows
from monitors.rank_exhaustion import fit_rank_floors

__all__ = [
    "HEAD_TOKENS",
    "LENGTH_EDGES",
    "HealthyGeneration",
    "choose",
    "cross_validate",
    "fires",
    "healthy_generations",
    "held_out",
    "length_bucket",
    "wilson",
]

LENGTH_EDGES = (64, 128, 256)  # generation-length buckets (tokens): <64, 64-127, 128-255, >=256
HEAD_TOKENS = LENGTH_EDGES[-1]  # long generations are also judged on this many first tokens


@dataclass(frozen=True)
class HealthyGeneration:
    """One healthy generation: its prompt (the cross-validation group), traffic type, length in tokens, and
    per persistence the per-band lows of its tracked novel PR (:func:`lab.eval.rank_corpus.band_lows`), over
    the whole generation and over its first :data:`HEAD_TOKENS` tokens."""

    prompt: str
    traffic: str
    tokens: int
    lows: Mapping[int, Mapping[str, float]]
    head_lows: Mapping[int, Mapping[str, float]]


def healthy_generations(
    tracks: Sequence[CorpusTracks], bands: Sequence[str], span: int, persistences: Sequence[int]
) -> list[HealthyGeneration]:
    """The healthy ones among ``tracks``, with their lows at every candidate persistence."""
    return [
        HealthyGeneration(
            t.item.prompt,
            t.item.kind,
            len(t.item.output_ids),
            {p: band_lows(t, bands, span, p) for p in persistences},
            {p: novel_pr_lows({k: v[:HEAD_TOKENS] for k, v in t.values.items()}, bands, span, p) for p in persistences},
        )
        for t in tracks
        if t.healthy
    ]


def fires(lows: Mapping[str, float], floors: Mapping[str, float]) -> bool:
    """Whether any band's low is below its floor (a band without a defined novel PR never fires)."""
    return any(band in lows and lows[band] < floor for band, floor in floors.items())


def wilson(fired: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) of a rate ``fired / total``."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = fired / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def _fold(prompt: str, folds: int) -> int:
    return zlib.crc32(prompt.encode()) % folds


def cross_validate(
    generations: Sequence[HealthyGeneration],
    persistences: Sequence[int],
    fit_rates: Sequence[float],
    folds: int = 5,
) -> list[dict]:
    """Per (persistence, fit rate): generations that fire when held out, over ``folds`` folds of prompts."""
    rows = []
    for persistence in persistences:
        for fit_rate in fit_rates:
            fired = 0
            for fold in range(folds):
                train = [g.lows[persistence] for g in generations if _fold(g.prompt, folds) != fold]
                floors = fit_rank_floors(train, fit_rate)
                held = [g for g in generations if _fold(g.prompt, folds) == fold]
                fired += sum(fires(g.lows[persistence], floors) for g in held)
            total = len(generations)
            rows.append(
                {
                    "persistence": persistence,
                    "fit_rate": fit_rate,
                    "fired": fired,
                    "generations": total,
                    "rate": fired / total if total else float("nan"),
                }
            )
    return rows


def choose(rows: Sequence[dict], target: float) -> dict:
    """The cross-validated row closest to ``target`` without passing it (ties: smaller persistence, then the
    larger fit rate); the lowest-rate row when none holds the target."""
    holding = [r for r in rows if r["rate"] <= target]
    if not holding:
        return min(rows, key=lambda r: (r["rate"], r["persistence"]))
    return min(holding, key=lambda r: (-r["rate"], r["persistence"], -r["fit_rate"]))


def length_bucket(tokens: int) -> str:
    """The length bucket of a generation, e.g. ``64-127``."""
    lower = 0
    for edge in LENGTH_EDGES:
        if tokens < edge:
            return f"{lower}-{edge - 1}"
        lower = edge
    return f">={lower}"


def held_out(generations: Sequence[HealthyGeneration], floors: Mapping[str, float], persistence: int) -> dict:
    """False-alarm rate of ``floors`` on ``generations``: overall, per traffic type and per length bucket, per
    generation (Wilson interval) and per 1,000 tokens (Wilson interval over tokens: a generation alarms at most
    once); and how many generations of :data:`HEAD_TOKENS` tokens or more fire within their first ones."""

    def rate(group: Sequence[HealthyGeneration]) -> dict:
        fired = sum(fires(g.lows[persistence], floors) for g in group)
        tokens = sum(g.tokens for g in group)
        low, high = wilson(fired, len(group))
        per_token = wilson(fired, tokens)
        return {
            "generations": len(group),
            "fired": fired,
            "rate": fired / len(group) if group else float("nan"),
            "ci95": [low, high],
            "tokens": tokens,
            "per_1k_tokens": 1000 * fired / tokens if tokens else float("nan"),
            "per_1k_tokens_ci95": [1000 * per_token[0], 1000 * per_token[1]],
        }

    by_traffic = sorted({g.traffic for g in generations})
    by_length = sorted({length_bucket(g.tokens) for g in generations}, key=lambda b: int(b.strip(">=").split("-")[0]))
    long = [g for g in generations if g.tokens >= HEAD_TOKENS]
    return {
        "all": rate(generations),
        "traffic": {t: rate([g for g in generations if g.traffic == t]) for t in by_traffic},
        "length": {b: rate([g for g in generations if length_bucket(g.tokens) == b]) for b in by_length},
        "long_head": {
            "head_tokens": HEAD_TOKENS,
            "generations": len(long),
            "fired": sum(fires(g.lows[persistence], floors) for g in long),
            "fired_in_head": sum(fires(g.head_lows[persistence], floors) for g in long),
        },
    }
