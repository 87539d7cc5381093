"""Verdicts an operator can gate on: false alarms per 1,000 healthy tokens, loops caught and how early, on
held-out prompts of the production-like corpus, per traffic type, inducer and length (``sinkwatch eval
verdicts``).

The detector is fitted on the tune split exactly as ``sinkwatch calibrate --corpus production-v1
--per-1k-tokens`` fits it; every number reported as held-out comes from the test split. Compared on the
same generations: the 4-gram text detector the issue started from (half of the last 16 tokens close a
repeated 4-gram), ``text.periodicity`` alone, and ``text.periodicity`` with each hidden-state signal (what
each adds). The risk model is checked for calibration (predicted vs observed) and for what acting at a
``block_at`` level costs and buys.
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from lab.eval import calibrate
from lab.eval.corpus import PRODUCTION_CORPUS
from lab.eval.dataset import Generation, build_generations, labelled_entries
from lab.eval.detection import detect
from lab.eval.fit import FitOptions, fit_calibration
from lab.eval.labels import HUMAN_KINDS
from lab.eval.periodicity_variants import PREVIOUS, with_variant
from lab.eval.signals import Sampling
from lab.eval.thresholds import out_of_fold_firing, track
from monitors.calibration import Calibration
from monitors.detector import PERIODICITY_SIGNAL
from monitors.text import MAX_PERIOD, PERIOD_JITTER, PERIODICITY_WINDOW, ROLLBACK_PERIOD, text_sink_onset

__all__ = [
    "LENGTH_BUCKETS",
    "PREVIOUS_NAME",
    "add_arguments",
    "breakdown",
    "firing_of",
    "group_stats",
    "out_of_fold",
    "restricted",
    "run",
    "tables",
    "traffic_of",
]

LENGTH_BUCKETS = ((0, 128), (128, 256), (256, 512), (512, 1001))
BLOCK_AT = (0.2, 0.5, 0.8, 0.95)
# Hidden-state signals measured one at a time on top of text.periodicity.
HIDDEN_SIGNALS = ("probe", "late.recurrence", "middle.recurrence", "middle.eff_rank", "late.pr", "entropy")

Firing = dict[str, int | None]
PREVIOUS_NAME = f"served selection refitted with the previous tracker ({PREVIOUS.name})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval verdicts``: calibration's (on the production-like corpus), plus outputs."""
    calibrate.add_arguments(parser)
    parser.set_defaults(corpus=PRODUCTION_CORPUS, per_1k_tokens=True, max_tokens=160)
    parser.add_argument("--results", type=Path, default=Path("docs/evaluation/verdicts.json"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))


def traffic_of(g: Generation) -> str:
    """The traffic type of a generation: its prompt kind, induced ones by their inducer."""
    if g.entry.kind == "induced":
        return f"induced:{g.entry.inducer}"
    return g.entry.kind or g.entry.prompt_set


def length_bucket(g: Generation) -> str:
    low, high = next(b for b in LENGTH_BUCKETS if b[0] <= g.length < b[1])
    return f"{low}-{high - 1}"


def group_stats(generations: Sequence[Generation], firing: Firing) -> dict:
    """False alarms per 1,000 healthy tokens; loops caught; onset against the 4-gram text detector."""
    healthy = [g for g in generations if g.healthy]
    loops = [g for g in generations if g.label.kind == "visible"]
    alarms = sum(firing[g.entry.key] is not None for g in healthy)
    tokens = sum(g.length for g in healthy)
    caught = [g for g in loops if firing[g.entry.key] is not None]
    leads = [g.label.onset - firing[g.entry.key] for g in caught if g.label.onset is not None]
    return {
        "healthy_generations": len(healthy),
        "healthy_tokens": tokens,
        "false_alarms": alarms,
        "false_alarms_per_1k_tokens": round(1000 * alarms / tokens, 4) if tokens else None,
        "loops": len(loops),
        "loops_caught": len(caught),
        "recall": round(len(caught) / len(loops), 4) if loops else None,
        "median_lead_over_text_detector": float(np.median(leads)) if leads else None,
        "caught_where_text_detector_never_fires": sum(g.label.onset is None for g in caught),
    }


def breakdown(generations: Sequence[Generation], firing: Firing) -> dict:
    """``group_stats`` over all generations, per traffic type, per length bucket, and per length bucket of
    the model's own answers (human-written documents left out)."""
    out = {"all": group_stats(generations, firing)}
    generated = [g for g in generations if g.entry.kind not in HUMAN_KINDS]
    for name, key, among in (
        ("traffic", traffic_of, generations),
        ("length", length_bucket, generations),
        ("length_generated", length_bucket, generated),
    ):
        groups: dict[str, list[Generation]] = {}
        for g in among:
            groups.setdefault(key(g), []).append(g)
        out[name] = {k: group_stats(v, firing) for k, v in sorted(groups.items())}
    return out


def firing_of(calibration: Calibration, generations: Sequence[Generation]) -> Firing:
    return {g.entry.key: detect(calibration, g).fired_at for g in generations}


def out_of_fold(calibration: Calibration, generations: Sequence[Generation], options: FitOptions) -> Firing:
    """Where the calibration's signals fire on each generation when thresholded, as the fit does, without its
    prompt's cross-validation fold: the selection's numbers on prompts its thresholds never saw."""
    tracks = [track(spec, generations, options.ewma_span, options.persistence) for spec in calibration.signals]
    firing = out_of_fold_firing(tracks, generations, options.target_fpr, options.per_1k_tokens)
    return {g.entry.key: int(f) if f >= 0 else None for g, f in zip(generations, firing, strict=True)}


def loop_onsets(generations: Sequence[Generation], firing: Firing) -> list[dict]:
    """Each visible loop: its traffic and length, where the 4-gram text detector fires and where this one did."""
    return [
        {
            "key": g.entry.key,
            "traffic": traffic_of(g),
            "length": g.length,
            "text_detector": g.label.onset,
            "fired": firing[g.entry.key],
        }
        for g in generations
        if g.label.kind == "visible"
    ]


def text_detector_firing(generations: Sequence[Generation]) -> Firing:
    return {g.entry.key: text_sink_onset(g.entry.output_ids) for g in generations}


def restricted(generations: Sequence[Generation], keep: Callable[[str], bool]) -> list[Generation]:
    """The generations with only the trajectories of the signals ``keep`` accepts."""
    return [Generation(g.entry, g.label, {n: v for n, v in g.trajectories.items() if keep(n)}) for g in generations]


def _only(*names: str) -> Callable[[str], bool]:
    """A trajectory filter keeping only these signals."""
    return lambda name: name in names


def risk_checks(calibration: Calibration, generations: Sequence[Generation]) -> dict:
    """Predicted risk at the end of each generation against what it was, in bins; and acting at block_at."""
    detections = {g.entry.key: detect(calibration, g) for g in generations}
    final = np.array([d.risk_trajectory[-1] if d.risk_trajectory else 0.0 for d in detections.values()])
    sinking = np.array([g.label.sink for g in generations])
    bins = []
    for low, high in ((0, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 1.01)):
        inside = (final >= low) & (final < high)
        if inside.any():
            bins.append(
                {
                    "risk": f"{low}-{min(high, 1)}",
                    "generations": int(inside.sum()),
                    "mean_predicted": round(float(final[inside].mean()), 4),
                    "observed_sinking": round(float(sinking[inside].mean()), 4),
                }
            )
    trade = {
        str(level): group_stats(generations, {k: d.risk_reached_at(level) for k, d in detections.items()})
        for level in BLOCK_AT
    }
    return {"reliability": bins, "block_at": trade}


def run(args: argparse.Namespace) -> dict:
    """Fit on tune, measure on test; write the results (and figures)."""
    entries = labelled_entries(args.corpus)
    tune_entries = [(e, lab) for e, lab in entries if e.split == "tune"]
    test_entries = [(e, lab) for e, lab in entries if e.split == "test"]
    print(f"verdicts: {len(tune_entries)} tune and {len(test_entries)} test labelled generations")
    calibration, tune, reference = calibrate.calibrate_on(args, tune_entries)
    sampling = Sampling(calibration.bands, window=args.window)
    test = build_generations(test_entries, args.corpus, sampling, reference, offline=False)
    options = calibrate.fit_options(args)

    def refit(keep: Callable[[str], bool]) -> Calibration:
        fitted, _ = fit_calibration(calibration.model, calibration.bands, restricted(tune, keep), reference, options)
        return fitted

    def measured(fitted: Calibration, keep: Callable[[str], bool], among: tuple[list, list] = (tune, test)) -> dict:
        on_tune, on_test = restricted(among[0], keep), restricted(among[1], keep)
        firing = firing_of(fitted, on_test)
        return {
            "signals": [f"{s.name}/{s.method}" for s in fitted.signals],
            "tune": group_stats(tune, firing_of(fitted, on_tune)),
            "tune_out_of_fold": group_stats(tune, out_of_fold(fitted, on_tune, options)),
            "test": breakdown(test, firing),
            "test_loops": loop_onsets(test, firing),
        }

    before = (with_variant(tune, PREVIOUS), with_variant(test, PREVIOUS))
    fitted_before, _ = fit_calibration(calibration.model, calibration.bands, before[0], reference, options)

    old_rule = {
        "tune": group_stats(tune, text_detector_firing(tune)),
        "test": breakdown(test, text_detector_firing(test)),
    }
    detectors = {
        "text detector (4-gram share, the old rule)": {"signals": [], **old_rule, "tune_out_of_fold": old_rule["tune"]},
        "served (calibrated selection)": measured(calibration, lambda n: True),
        PREVIOUS_NAME: measured(fitted_before, lambda n: True, before),
        "text.periodicity alone": measured(refit(_only(PERIODICITY_SIGNAL)), _only(PERIODICITY_SIGNAL)),
    }
    for signal in HIDDEN_SIGNALS:
        keep = _only(PERIODICITY_SIGNAL, signal)
        detectors[f"text.periodicity + {signal}"] = measured(refit(keep), keep)
    result = {
        "corpus": args.corpus,
        "calibration": {
            "signals": detectors["served (calibrated selection)"]["signals"],
            "thresholds": {s.name: round(s.threshold, 4) for s in calibration.signals},
            "risk": None if calibration.risk is None else vars(calibration.risk),
            "target_false_alarms_per_1k_tokens": args.target_fpr,
        },
        "detectors": detectors,
        "risk": {"tune": risk_checks(calibration, tune), "test": risk_checks(calibration, test)},
    }
    if args.figures is not None:
        from lab.eval.verdict_plots import plot_verdicts

        result["figures"] = plot_verdicts(result, args.figures)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1))
    print(tables(result))
    print(f"verdicts: wrote {args.results}")
    if args.output:
        args.output.write_text(replace(calibration, notes={**calibration.notes, **provenance()}).to_json())
    return result


def provenance() -> dict[str, str]:
    """How a calibration written by this command was made: the command line and the periodicity tracker."""
    return {
        "command": " ".join(["sinkwatch", *sys.argv[1:]]),
        "text.periodicity": f"max_period={MAX_PERIOD} jitter={PERIOD_JITTER} window={PERIODICITY_WINDOW} "
        f"rollback_period={ROLLBACK_PERIOD}",
    }


def _cell(value: float | int | None) -> str:
    return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _row(name: str, s: dict) -> str:
    cells = (
        s["healthy_tokens"],
        s["false_alarms"],
        s["false_alarms_per_1k_tokens"],
        f"{s['loops_caught']}/{s['loops']}",
        s["recall"],
        s["median_lead_over_text_detector"],
    )
    return f"| {name} | " + " | ".join(_cell(c) for c in cells) + " |"


def tables(result: dict) -> str:
    """The markdown tables of docs/EVALUATION.md ("Verdicts"), from the results."""
    head = (
        "| {} | healthy tokens | false alarms | per 1k healthy tokens | loops caught | recall | "
        "median lead over the 4-gram detector |\n|---|---|---|---|---|---|---|"
    )
    detectors = result["detectors"]
    out = [head.format("detector (test split)")]
    out += [_row(f"{name} ({', '.join(d['signals']) or 'rule'})", d["test"]["all"]) for name, d in detectors.items()]
    out.append("\n" + head.format("detector (tune split)"))
    out += [_row(name, d["tune"]) for name, d in detectors.items()]
    out.append("\n" + head.format("detector (tune split, each fold thresholded without its prompts)"))
    out += [_row(name, d["tune_out_of_fold"]) for name, d in detectors.items()]
    for axis in ("traffic", "length", "length_generated"):
        for name in ("text detector (4-gram share, the old rule)", PREVIOUS_NAME, "served (calibrated selection)"):
            out.append("\n" + head.format(f"{axis}: {name}"))
            out += [_row(group, s) for group, s in detectors[name]["test"][axis].items()]
    out.append("\n" + head.format("served detector acting at block_at (test)"))
    out += [_row(level, s) for level, s in result["risk"]["test"]["block_at"].items()]
    out.append("\n| risk bin (test) | generations | mean predicted | observed sinking |\n|---|---|---|---|")
    out += [
        f"| {b['risk']} | {b['generations']} | {b['mean_predicted']} | {b['observed_sinking']} |"
        for b in result["risk"]["test"]["reliability"]
    ]
    return "\n".join(out)
