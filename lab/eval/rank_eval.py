"""``sinkwatch eval rank``: rank exhaustion apart from loops — fit it, test it on loops and healthy traffic,
and drive it with stressors on the embedded model and Gemma 3 270M.

1. Corpora (no model): the production corpus and the extra healthy traffic (``rank-healthy-v1``: ordinary,
   bland and production prompts, sampled and greedy; ``sinkwatch eval corpus --corpus rank-healthy-v1``).
   Recurrence levels are fitted on the healthy tune generations; persistence and the floors' fit rate are
   chosen by cross-validation over the tune prompts (:mod:`lab.eval.rank_floors`), the floors fitted on the
   whole tune split, and their false-alarm rate read on the held-out test split (overall with a Wilson
   interval, per traffic type and length), on text-visible loops and on induced loops, beside plain-PR
   floors fitted the same way. Writes the calibration overlay (``monitors/calibrations/<model>.rank.json``)
   that :func:`monitors.calibration.load_calibration` merges.
2. Stressors (:mod:`lab.eval.rank_stress`), per model: the novel PR's margin to the floor per band and the
   scored task's accuracy per level, with 95 % intervals. Gemma has no corpus: its levels and floors are
   those of a calibration named with ``--rank-calibration gemma-3-270m=FILE`` (fitted from its recorded
   traffic, ``calibrate --from-traffic``), else fitted on its own unstressed answers (no constraints, greedy,
   float32).

Generated answers and states are cached per stressor and level under ``~/.cache/sinkwatch/eval/rank/``
(never committed).
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gateway.engine.provision import DEFAULT_MODEL, cache_root, served_name
from lab.eval.rank_corpus import (
    CorpusItem,
    band_lows,
    corpus_tracks,
    fit_levels,
    levels_from_states,
    read_items,
)
from lab.eval.rank_floors import choose, cross_validate, fires, healthy_generations, held_out, wilson
from lab.eval.rank_stress import (
    WINDOW,
    answer_fires,
    context_windows,
    long_text,
    replay_tail,
    run_stressors,
    window_end,
)
from lab.eval.rank_subjects import GEMMA, load_subject
from monitors.bands import captured_layers
from monitors.calibration import Calibration, load_calibration, shipped_calibration_path
from monitors.rank_exhaustion import LEVEL_QUANTILE, fit_rank_floors, rank_overlay

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval rank``."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--corpus", default="production-v1,rank-healthy-v1", help="cached corpora under ~/.cache/sinkwatch/eval"
    )
    parser.add_argument("--stress-sets", default="induce,enumeration", help="prompt sets kept out of healthy")
    parser.add_argument("--human-sets", default="human", help="prompt sets healthy even when their text repeats")
    parser.add_argument(
        "--quantile", type=float, default=LEVEL_QUANTILE, help="recurrence level: quantile of healthy traffic"
    )
    parser.add_argument("--levels-from", type=Path, help="recurrence levels from this overlay instead of refitting")
    parser.add_argument("--persistences", default="1,2,4,8,16", help="persistences cross-validation chooses from")
    parser.add_argument("--fit-rates", default="0.05,0.04,0.03,0.02,0.01", help="rates the floors may be fitted at")
    parser.add_argument("--fpr", type=float, default=0.05, help="target share of healthy generations that fire")
    parser.add_argument(
        "--constraints", default="0,5,10,15,20,30,40,50", help="numbers of stacked constraints (0 included)"
    )
    parser.add_argument("--temperatures", default="0,0.7,1.0,1.4,1.8,2.5")
    parser.add_argument("--precisions", default="32,16,8", help="bits: 32 float32, 16 bfloat16, 8 int8 dynamic")
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--per-task", type=int, default=10, help="scored items per task (at most 10; 3 tasks)")
    parser.add_argument("--context", type=int, default=0, help="longest prefill (tokens; 0: the model's limit)")
    parser.add_argument("--context-points", type=int, default=16, help="windows read along the long prefill")
    parser.add_argument(
        "--cached-only", action="store_true", help="report only the stress levels already measured (cached)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more thrash on a shared CPU)")
    parser.add_argument("--models", default=f"{DEFAULT_MODEL},{GEMMA}", help="models the stressors run on")
    parser.add_argument(
        "--rank-calibration",
        action="append",
        default=[],
        metavar="MODEL=FILE",
        help="recurrence levels and rank floors of a model without a corpus, from this calibration (repeatable)",
    )
    parser.add_argument("--overlay", type=Path, default=None, help="where to write the rank calibration overlay")
    parser.add_argument("--results", type=Path, default=Path("docs/evaluation/rank.json"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))


def corpus_study(args: argparse.Namespace, calibration: Calibration) -> dict:
    """Fit levels on the healthy tune generations; choose persistence and fit rate by cross-validation over
    prompts, fit the floors, read their false-alarm rate on the held-out healthy generations (overall, per
    traffic type and length) and their fire rates on loops, beside plain-PR floors fitted the same way."""
    stress = tuple(args.stress_sets.split(","))
    human = tuple(args.human_sets.split(","))
    items = [item for corpus in args.corpus.split(",") for item in read_items(corpus)]
    if args.levels_from:
        levels = {int(k): float(v) for k, v in json.loads(args.levels_from.read_text())["recurrence_levels"].items()}
    else:
        healthy_tune = [i for i in items if i.split == "tune" and _healthy(i, stress, human)]
        levels = fit_levels(healthy_tune, calibration, args.quantile)
    replays = cache_root() / "eval" / "rank" / "tracks"
    tracks = corpus_tracks(items, calibration, levels, lambda item: _healthy(item, stress, human), replays)
    bands = [b.name for b in calibration.bands]
    span = calibration.ewma_span
    persistences = [int(x) for x in args.persistences.split(",")]
    tune = healthy_generations([t for t in tracks if t.item.split == "tune"], bands, span, persistences)
    test = healthy_generations([t for t in tracks if t.item.split != "tune"], bands, span, persistences)
    cv = cross_validate(tune, persistences, [float(x) for x in args.fit_rates.split(",")])
    chosen = choose(cv, args.fpr)
    persistence, fit_rate = chosen["persistence"], chosen["fit_rate"]
    floors = fit_rank_floors([g.lows[persistence] for g in tune], fit_rate)
    plain_floors = fit_rank_floors(
        [_plain_lows(t, bands, span, persistence) for t in tracks if t.healthy and t.item.split == "tune"], fit_rate
    )
    groups = {
        "healthy_tune": lambda t: t.healthy and t.item.split == "tune",
        "healthy_test": lambda t: t.healthy and t.item.split != "tune",
        "induced_loops": lambda t: t.item.prompt_set in stress and t.item.loops,
        "induced_no_loop": lambda t: t.item.prompt_set in stress and not t.item.loops,
        "visible_loops_other": lambda t: not t.healthy and t.item.prompt_set not in stress,
    }
    rates = {}
    for name, member in groups.items():
        group = [t for t in tracks if member(t)]
        novel = [fires(band_lows(t, bands, span, persistence), floors) for t in group]
        plain = [fires(_plain_lows(t, bands, span, persistence), plain_floors) for t in group]
        undefined = [
            np.mean(~np.isfinite(t.values[f"{bands[-1]}.pr_novel"][np.isfinite(t.values[f"{bands[-1]}.pr"])]))
            for t in group
            if np.isfinite(t.values[f"{bands[-1]}.pr"]).any()
        ]
        rates[name] = {
            "generations": len(group),
            "novel_pr_fire_rate": float(np.mean(novel)) if group else float("nan"),
            "novel_pr_ci95": wilson(int(np.sum(novel)), len(group)),
            "plain_pr_fire_rate": float(np.mean(plain)) if group else float("nan"),
            "undefined_window_share": float(np.mean(undefined)) if undefined else float("nan"),
        }
    return {
        "levels": levels,
        "floors": floors,
        "plain_floors": plain_floors,
        "persistence": persistence,
        "fit_rate": fit_rate,
        "cross_validation": cv,
        "held_out": held_out(test, floors, persistence),
        "tune": held_out(tune, floors, persistence),
        "groups": rates,
        "tracks": tracks,
    }


def _healthy(item: CorpusItem, stress: Sequence[str], human: Sequence[str]) -> bool:
    """Human-written text always; other generations unless they loop or come from a sink-inducing set."""
    return item.prompt_set in human or (item.prompt_set not in stress and not item.loops)


def _plain_lows(track, bands: Sequence[str], span: int, persistence: int) -> dict[str, float]:
    """:func:`band_lows` of the plain PR (the old rank-floor definition), for comparison."""
    renamed = type(track)(track.item, track.healthy, {f"{b}.pr_novel": track.values[f"{b}.pr"] for b in bands})
    return band_lows(renamed, bands, span, persistence)


def stress_study(
    args: argparse.Namespace,
    model: str,
    levels: dict | None,
    floors: dict | None,
    tracking: tuple[int, int],
    source: str | None = None,
) -> dict:
    """Stressors on one model: per stressor and level, each band's median margin (with a bootstrap interval)
    and share below the floor, the share of answers the verdict fires on (the novel PR tracked with
    ``tracking``: EWMA span, persistence), and accuracy (with a Wilson interval) or, for context, next-token
    loss."""
    cache = cache_root() / "eval" / "rank" / f"{served_name(model)}-m{args.max_tokens}-k{args.per_task}"
    subject = load_subject(model)
    stress_levels = {
        "constraints": [int(x) for x in args.constraints.split(",")],
        "temperature": [float(x) for x in args.temperatures.split(",")],
        "precision": [int(x) for x in args.precisions.split(",")],
    }
    measured = run_stressors(subject, stress_levels, args.max_tokens, args.per_task, cache, args.cached_only)
    length = min(args.context or subject.max_context, subject.max_context)
    text = long_text(Path("docs"))
    context = context_windows(subject, text, length, cache, args.context_points, args.cached_only)
    bands = subject.bands
    baseline = [m for m in measured if m.stressor == "constraints" and m.level == 0]
    if levels is None:  # no corpus for this model: its own unstressed answers set the levels and floors
        stored = captured_layers(bands)
        levels = levels_from_states(
            ((m.tail, np.zeros(len(m.tail)), m.ids) for m in baseline), bands, WINDOW, args.quantile, stored
        )
    replays = {id(m): replay_tail(bands, m, levels) for m in measured + [w for w, _ in context]}
    ends = {key: window_end(bands, rows) for key, rows in replays.items()}
    if floors is None:
        floors = fit_rank_floors(
            [{b: v for b, v in ends[id(m)][0].items() if np.isfinite(v)} for m in baseline], args.fpr
        )
    rows = []
    for stressor in ("constraints", "temperature", "precision", "context"):
        group = measured if stressor != "context" else [w for w, _ in context]
        for level in sorted({m.level for m in group if m.stressor == stressor}):
            at = [m for m in group if m.stressor == stressor and m.level == level]
            row = {"stressor": stressor, "level": level, "items": len(at)}
            if stressor == "context":
                row["nll"] = next(nll for w, nll in context if w.level == level)
            else:
                correct = int(sum(m.correct for m in at))
                row["accuracy"] = correct / len(at)
                row["accuracy_ci95"] = wilson(correct, len(at))
                fired = int(sum(answer_fires(bands, replays[id(m)], floors, tracking) for m in at))
                row["verdict_fires"] = fired / len(at)
                row["verdict_fires_ci95"] = wilson(fired, len(at))
            for band in bands:
                novel = np.array([ends[id(m)][0][band.name] for m in at])
                plain = np.array([ends[id(m)][1][band.name] for m in at])
                row[band.name] = _band_summary(novel, plain, floors.get(band.name))
            rows.append(row)
    return {
        "model": subject.name,
        "bands": {b.name: list(b.layers) for b in bands},
        "levels": levels,
        "floors": floors,
        "floors_from": source or "the model's own unstressed answers",
        "context_tokens": length,
        "rows": rows,
    }


def _band_summary(novel: np.ndarray, plain: np.ndarray, floor: float | None) -> dict:
    """One band at one level: median novel PR, its margin to ``floor`` with a bootstrap 95 % interval of the
    median, the share of items below the floor and of undefined windows, the median plain PR."""
    defined = novel[np.isfinite(novel)]
    summary = {"undefined": float(np.mean(~np.isfinite(novel))), "plain_pr": float(np.nanmedian(plain))}
    if not len(defined) or floor is None:
        return summary | {"novel_pr": None, "margin": None, "margin_ci95": None, "below_floor": None}
    medians = np.median(np.random.default_rng(0).choice(defined, (1000, len(defined))), axis=1)
    return summary | {
        "novel_pr": float(np.median(defined)),
        "margin": float(np.median(defined) - floor),
        "margin_ci95": [float(np.quantile(medians, 0.025) - floor), float(np.quantile(medians, 0.975) - floor)],
        "below_floor": float(np.mean(defined < floor)),
    }


def run(args: argparse.Namespace) -> dict:
    """Corpus study, overlay, stressors, figures, results."""
    import torch

    torch.set_num_threads(args.threads)
    calibration = load_calibration(served_name(args.model))
    corpus = corpus_study(args, calibration)
    overlay = args.overlay or shipped_calibration_path(served_name(args.model)).with_suffix(".rank.json")
    overlay.write_text(
        json.dumps(
            rank_overlay(
                corpus["levels"],
                corpus["floors"],
                corpus["persistence"],
                {"corpus": args.corpus, "recurrence_quantile": args.quantile, "fit_rate": corpus["fit_rate"]},
            ),
            indent=1,
        )
    )
    result = {"corpus": {k: v for k, v in corpus.items() if k != "tracks"}, "stress": []}
    named = dict(entry.split("=", 1) for entry in args.rank_calibration)
    for model in filter(None, args.models.split(",")):
        levels, floors, source = None, None, None
        tracking = (calibration.ewma_span, corpus["persistence"])
        if model == args.model:
            levels, floors, source = corpus["levels"], corpus["floors"], f"the corpus {args.corpus}"
        elif model in named:
            other = load_calibration(Path(named[model]))
            levels, floors, source = other.recurrence_levels, other.rank_floors, named[model]
            tracking = (other.ewma_span, other.persistence)
        result["stress"].append(stress_study(args, model, levels, floors, tracking, source))
        print(f"stressors done on {model}", flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1, default=str))
    from lab.eval.rank_plots import plot_corpus, plot_lengths, plot_stress

    plot_corpus(corpus["tracks"], corpus["floors"], calibration.bands, args.figures)
    plot_lengths(corpus["held_out"], args.figures)
    for study in result["stress"]:
        plot_stress(study, args.figures)
    print(json.dumps(result["corpus"], indent=1, default=str))
    return result
