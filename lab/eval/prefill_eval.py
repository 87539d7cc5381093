"""Prefill risk: how well the prompt's states and the request's sampling predict a loop before the first
token, and whether the detector gains from it as a prior (``sinkwatch eval prefill``).

Everything is fitted on the tune split of the production-like corpus and measured on its test split (split
by prompt). AUROCs carry a 95% bootstrap interval that resamples test prompts (a prompt and all its
generations together). The detector is the shipped calibration's sink detector, replayed token by token;
with a prior, a request whose prefill risk is ``r`` fires once its score (the largest held margin past a
threshold, in normal-traffic standard deviations) reaches ``-λ·r`` instead of 0; with an alarm, a request
whose prefill risk reaches the alarm level fires at its first token. ``λ`` and the alarm level are chosen on
tune (with out-of-fold prefill risks) as those that catch the most loops, then earliest, at the detector's
own tune false alarms; the test split says what they are worth. The chosen alarm level (None when no level
keeps to that) is written into the calibration with ``--output``.
"""

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lab.eval.corpus import PRODUCTION_CORPUS, CorpusEntry, load_arrays
from lab.eval.dataset import Generation, build_generations, labelled_entries
from lab.eval.detection import detect, step_features
from lab.eval.signals import Reference, Sampling
from lab.eval.verdicts_eval import group_stats
from monitors.bands import captured_layers
from monitors.calibration import Calibration, shipped_calibration_path
from monitors.detector import StabilityDetector
from monitors.features import FeatureExtractor
from monitors.prefill import PrefillProbe, RequestSampling, fit_logistic, fit_prefill_probe, grouped_folds
from monitors.probe import LinearProbe

__all__ = ["add_arguments", "auroc", "bootstrap_auroc", "request_sampling", "run"]

PRIOR_STRENGTHS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # λ, in standard deviations
ALARM_LEVELS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.825, 0.85, 0.875, 0.9, 0.95, 0.99)
FOLDS = 5


@dataclass
class Item:
    """One labelled generation with the prefill probe's inputs: the prompt's last-position states at the
    captured layers and the request's sampling."""

    generation: Generation
    states: np.ndarray
    sampling: RequestSampling

    @property
    def loop(self) -> bool:
        return self.generation.label.kind == "visible"

    @property
    def prompt(self) -> str:
        return self.generation.entry.prompt_id

    @property
    def inducer(self) -> str:
        return self.generation.entry.inducer

    @property
    def generated(self) -> bool:
        """A generated answer that loops or is healthy (not a teacher-forced document, not bland)."""
        return self.generation.entry.prompt_set != "human" and (self.loop or self.generation.healthy)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval prefill``."""
    parser.add_argument("--corpus", default=PRODUCTION_CORPUS)
    parser.add_argument("--calibration", type=Path, default=None, help="default: the shipped calibration")
    parser.add_argument("--l2", type=float, default=10.0, help="ridge penalty of the prompt probe")
    parser.add_argument("--target-fpr", type=float, default=0.05, help="false alarms per 1,000 healthy tokens")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--results", type=Path, default=Path("docs/evaluation/prefill.json"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    parser.add_argument(
        "--output", type=Path, default=None, help="write the calibration with the prefill probe fitted on tune"
    )


def request_sampling(entry: CorpusEntry) -> RequestSampling:
    """The sampling a corpus generation was made with, as the prefill prior reads it."""
    bias = entry.sampling.get("logit_bias") or {}
    return RequestSampling(
        temperature=entry.temperature,
        repetition_penalty=entry.repetition_penalty,
        frequency_penalty=entry.sampling.get("frequency_penalty", 0.0),
        presence_penalty=entry.sampling.get("presence_penalty", 0.0),
        max_logit_bias=max(bias.values(), default=0.0),
        max_tokens=entry.sampling.get("max_tokens", 256),
    )


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """The probability that a random positive scores above a random negative (ties count half)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    positive, negative = s[y], s[~y]
    if not len(positive) or not len(negative):
        return None
    above = (positive[:, None] > negative[None]).sum() + 0.5 * (positive[:, None] == negative[None]).sum()
    return float(above / (len(positive) * len(negative)))


def bootstrap_auroc(
    scores: Sequence[float], labels: Sequence[bool], groups: Sequence[str], rounds: int, seed: int = 0
) -> tuple[float, float] | None:
    """95% interval of the AUROC over resamples of whole groups (prompts), with replacement."""
    s, y, g = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool), np.asarray(groups)
    names = np.unique(g)
    members = [np.flatnonzero(g == name) for name in names]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])
        value = auroc(s[rows], y[rows])
        if value is not None:
            values.append(value)
    if not values:
        return None
    low, high = np.quantile(values, [0.025, 0.975])
    return round(float(low), 4), round(float(high), 4)


def _items(calibration: Calibration, corpus: str) -> list[Item]:
    reference = Reference(calibration.mean_state_arrays(), calibration.outlier_dims, calibration.probe)
    sampling = Sampling(calibration.bands, window=calibration.window)
    entries = labelled_entries(corpus)
    generations = build_generations(entries, corpus, sampling, reference, offline=False)
    layers = list(captured_layers(calibration.bands))
    return [
        Item(g, load_arrays(g.entry, corpus)["states"][0, layers].astype(np.float64), request_sampling(g.entry))
        for g in generations
    ]


class _Parts:
    """The three predictors fitted on some items: the prompt probe, the sampling prior alone, the combination."""

    def __init__(self, items: Sequence[Item], layers: Sequence[int], l2: float) -> None:
        items = [i for i in items if i.generated]
        labels = np.array([i.loop for i in items], dtype=float)
        self.probe = fit_prefill_probe(
            np.stack([i.states for i in items]),
            labels,
            [i.sampling for i in items],
            [i.prompt for i in items],
            layers,
            prompt_rows=np.array([i.inducer == "none" for i in items]),
            l2=l2,
        )
        self._sampling = fit_logistic(np.stack([i.sampling.features() for i in items]), labels, 1.0)

    def scores(self, item: Item) -> dict[str, float]:
        prompt = self.probe.prompt_score(item.states)
        weights, bias = self._sampling
        return {
            "prompt": prompt,
            "sampling": float(weights @ item.sampling.features() + bias),
            "combined": self.probe.risk(prompt, item.sampling),
        }


def _out_of_fold(items: Sequence[Item], layers: Sequence[int], l2: float) -> list[dict[str, float]]:
    """Each item scored by parts fitted without its prompt (for choosing levels on tune)."""
    fold = grouped_folds([i.prompt for i in items], FOLDS)
    out: list[dict[str, float]] = [{} for _ in items]
    for k in range(FOLDS):
        parts = _Parts([i for i, f in zip(items, fold, strict=True) if f != k], layers, l2)
        for row in np.flatnonzero(fold == k):
            out[row] = parts.scores(items[row])
    return out


def _auroc_table(items: Sequence[Item], scores: Sequence[dict[str, float]], rounds: int) -> dict:
    """AUROC with its interval per part, over all generated answers, per inducer and for no inducer."""
    groups = {"all": lambda i: True} | {
        name: (lambda i, name=name: i.inducer == name) for name in sorted({i.inducer for i in items})
    }
    table = {}
    for name, keep in groups.items():
        rows = [(i, s) for i, s in zip(items, scores, strict=True) if i.generated and keep(i)]
        labels, prompts = [i.loop for i, _ in rows], [i.prompt for i, _ in rows]
        entry = {"loops": int(sum(labels)), "healthy": len(labels) - int(sum(labels))}
        for part in ("prompt", "sampling", "combined"):
            values = [s[part] for _, s in rows]
            value = auroc(values, labels)
            entry[part] = {
                "auroc": None if value is None else round(value, 4),
                "ci95": bootstrap_auroc(values, labels, prompts, rounds) if value is not None else None,
            }
        entry["mean_combined_risk_loops"] = _mean([s["combined"] for i, s in rows if i.loop])
        entry["mean_combined_risk_healthy"] = _mean([s["combined"] for i, s in rows if not i.loop])
        table[name] = entry
    return table


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _score_trajectory(calibration: Calibration, generation: Generation) -> np.ndarray:
    """The detector's score after every token (0 is where a single signal's verdict fires)."""
    detector = StabilityDetector(calibration)
    out = []
    for step in step_features(generation, calibration.window):
        detector.update(step)
        out.append(detector.score)
    return np.array(out)


@dataclass
class _Replay:
    """What the detector did on one item and what a prior could change: its firing token and score trajectory."""

    item: Item
    fired_at: int | None
    scores: np.ndarray
    risk: float

    def with_prior(self, strength: float) -> int | None:
        """The firing token when a prefill risk ``r`` lowers the bar from 0 to ``-strength · r``."""
        early = np.flatnonzero(self.scores >= -strength * self.risk) if strength > 0 else ()
        candidates = [t for t in (self.fired_at, int(early[0]) if len(early) else None) if t is not None]
        return min(candidates) if candidates else None

    def with_alarm(self, level: float) -> int | None:
        """The firing token when a prefill risk of at least ``level`` fires before the first token (what
        ``StabilityDetector.note_prefill_risk`` does with the calibration's ``alarm_level``)."""
        return 0 if self.risk >= level else self.fired_at


def _replays(calibration: Calibration, items: Sequence[Item], risks: Sequence[float]) -> list[_Replay]:
    return [
        _Replay(i, detect(calibration, i.generation).fired_at, _score_trajectory(calibration, i.generation), r)
        for i, r in zip(items, risks, strict=True)
    ]


def _stats(replays: Sequence[_Replay], firing: dict[str, int | None]) -> dict:
    return group_stats([r.item.generation for r in replays], firing)


def _choose(replays: Sequence[_Replay], options: Sequence[float], rule: str, allowed: int) -> float:
    """Among ``options`` (the most conservative first), the one that catches the most tune loops, then warns
    earliest, with tune false alarms within ``allowed``; the first when none keeps within it."""
    best, best_key = options[0], None
    for option in options:
        stats = _stats(replays, {r.item.generation.entry.key: getattr(r, rule)(option) for r in replays})
        if stats["false_alarms"] > allowed:
            continue
        key = (stats["loops_caught"], stats["median_lead_over_text_detector"] or -1e9)
        if best_key is None or key > best_key:
            best, best_key = option, key
    return best


def _detector_results(tune: list[_Replay], test: list[_Replay], target: float) -> dict:
    """The detector alone, with the prior, and with a prefill alarm: tune (levels chosen there) and test.

    The levels are chosen at the same tune false alarms as the detector alone (or the target's, if higher).
    """
    tune_tokens = sum(r.item.generation.length for r in tune if r.item.generation.healthy)
    alone = _stats(tune, {r.item.generation.entry.key: r.fired_at for r in tune})["false_alarms"]
    allowed = max(int(target * tune_tokens / 1000), alone)
    strength = _choose(tune, PRIOR_STRENGTHS, "with_prior", allowed)
    level = _choose(tune, (1.01, *reversed(ALARM_LEVELS)), "with_alarm", allowed)
    rules = {
        "detector alone": lambda r: r.fired_at,
        f"detector + prior (λ={strength}, chosen on tune)": lambda r: r.with_prior(strength),
        f"detector + prefill alarm (risk ≥ {level}, chosen on tune)": lambda r: r.with_alarm(level),
    }
    rules |= {f"detector + prior (λ={s})": (lambda r, s=s: r.with_prior(s)) for s in PRIOR_STRENGTHS[1:]}
    rules |= {f"detector + prefill alarm (risk ≥ {v})": (lambda r, v=v: r.with_alarm(v)) for v in ALARM_LEVELS}
    rules |= {f"prefill alarm alone (risk ≥ {v})": (lambda r, v=v: 0 if r.risk >= v else None) for v in ALARM_LEVELS}
    out: dict = {"allowed_tune_false_alarms": allowed, "chosen_strength": strength, "chosen_alarm_level": level}
    for name, rule in rules.items():
        out[name] = {
            split: _stats(replays, {r.item.generation.entry.key: rule(r) for r in replays})
            for split, replays in (("tune", tune), ("test", test))
        }
    return out


def _cost_microseconds(calibration: Calibration, probe: PrefillProbe, states: np.ndarray, rounds: int = 200) -> dict:
    """What the prefill risk adds to a request's first token on this machine, in microseconds: the extractor's
    first push with and without the prompt probe (alternated, 9 times each, the median kept: the host is
    shared), and the combination with the sampling prior."""

    def first_push(prefill: LinearProbe | None) -> float:
        extractors = [
            FeatureExtractor(calibration.bands, calibration.window, prefill_probe=prefill) for _ in range(rounds)
        ]
        start = time.perf_counter()
        for extractor in extractors:
            extractor.push(states, 1.0, 0)
        return 1e6 * (time.perf_counter() - start) / rounds

    pairs = [(first_push(None), first_push(probe.prompt)) for _ in range(9)]
    sampling = RequestSampling()
    start = time.perf_counter()
    for _ in range(rounds):
        probe.risk(0.0, sampling)
    combine = 1e6 * (time.perf_counter() - start) / rounds
    return {
        "first_push_without": round(float(np.median([p[0] for p in pairs])), 1),
        "first_push_with_prompt_probe": round(float(np.median([p[1] for p in pairs])), 1),
        "added_median_of_pairs": round(float(np.median([p[1] - p[0] for p in pairs])), 1),
        "combination": round(combine, 1),
    }


def run(args: argparse.Namespace) -> dict:
    """Fit on tune, measure on test; write the results, figures and (with ``--output``) the calibration."""
    path = args.calibration or shipped_calibration_path("SmolLM2-135M-Instruct")
    calibration = Calibration.from_json(path.read_text())
    layers = list(captured_layers(calibration.bands))
    items = _items(calibration, args.corpus)
    tune = [i for i in items if i.generation.entry.split == "tune"]
    test = [i for i in items if i.generation.entry.split == "test"]
    print(f"prefill: {len(tune)} tune and {len(test)} test labelled generations; layers {layers}")
    parts = _Parts(tune, layers, args.l2)
    tune_scores = _out_of_fold(tune, layers, args.l2)
    test_scores = [parts.scores(i) for i in test]
    detector = _detector_results(
        _replays(calibration, tune, [s["combined"] for s in tune_scores]),
        _replays(calibration, test, [s["combined"] for s in test_scores]),
        args.target_fpr,
    )
    level = detector["chosen_alarm_level"]
    probe = replace(parts.probe, alarm_level=level if level <= 1 else None)
    result = {
        "corpus": args.corpus,
        "calibration": str(path),
        "layers": layers,
        "prefill_probe": probe.to_dict() | {"prompt": {"layers": layers, "l2": args.l2}},
        "auroc": {
            "test": _auroc_table(test, test_scores, args.bootstrap),
            "tune_out_of_fold": _auroc_table(tune, tune_scores, args.bootstrap),
        },
        "detector": detector,
        "cost_microseconds": _cost_microseconds(calibration, probe, test[0].states),
        "roc": {
            part: {
                "scores": [s[part] for i, s in zip(test, test_scores, strict=True) if i.generated],
                "loops": [i.loop for i in test if i.generated],
            }
            for part in ("prompt", "sampling", "combined")
        },
    }
    if args.figures is not None:
        from lab.eval.prefill_plots import plot_prefill

        result["figures"] = plot_prefill(result, args.figures)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1))
    print(tables(result))
    print(f"prefill: wrote {args.results}")
    if args.output:
        fitted = Calibration.from_json(args.output.read_text()) if args.output.is_file() else calibration
        args.output.write_text(replace(fitted, prefill_probe=probe).to_json() + "\n")
        print(f"prefill: wrote the prefill probe into {args.output}")
    return result


def _cell(value: object) -> str:
    return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def tables(result: dict) -> str:
    """The markdown tables of docs/EVALUATION.md ("Prefill risk")."""
    out = [
        "| generations (test) | loops | healthy | prompt AUROC [95% CI] | sampling AUROC [95% CI] | "
        "combined AUROC [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in result["auroc"]["test"].items():
        cells = [
            f"{_cell(entry[p]['auroc'])} {entry[p]['ci95'] or ''}".strip() for p in ("prompt", "sampling", "combined")
        ]
        out.append(f"| {name} | {entry['loops']} | {entry['healthy']} | " + " | ".join(cells) + " |")
    out += [
        "",
        "| detector (test split) | healthy tokens | false alarms | per 1k healthy tokens | loops caught | recall | "
        "median lead over the 4-gram detector |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, splits in result["detector"].items():
        if isinstance(splits, dict) and "test" in splits:
            s = splits["test"]
            cells = (
                s["healthy_tokens"],
                s["false_alarms"],
                s["false_alarms_per_1k_tokens"],
                f"{s['loops_caught']}/{s['loops']}",
                s["recall"],
                s["median_lead_over_text_detector"],
            )
            out.append(f"| {name} | " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(out)
