"""Does a hidden-state signal predict a sink earlier or better than the text? Measured on held-out prompts.

The detector is calibrated on the tune split exactly as ``sinkwatch calibrate`` does; every number below
comes from the test split (prompts never seen while tuning), plus a prompt-grouped cross-validation over
the whole corpus. For each signal alone (at a threshold giving ``--target-fpr`` false positives on tune
normal generations) and for the combined detector:

- AUROC of visible sinks vs negatives, and of bland sinks vs negatives (generation level);
- early-warning AUROC: only the first ``H`` tokens, only sinks the text detector has not flagged by ``H``;
- length-matched AUROC: only generations that ran to ``max_tokens``;
- FPR at 90% recall of visible sinks;
- online: FPR on normal test generations, recall, and lead in tokens over the text detector and over the
  best text-level baseline.
"""

import argparse
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.eval import calibrate
from lab.eval.dataset import Generation, build_generations, labelled_entries
from lab.eval.detection import detect
from lab.eval.fit import fit_calibration
from lab.eval.scoring import auroc, firing_token, fpr_at_recall, generation_score, median_or_nan
from lab.eval.signals import Sampling
from lab.eval.thresholds import candidate_spec, detection_credit
from monitors.calibration import Calibration, SignalThreshold, fit_threshold

__all__ = ["add_arguments", "combined", "run", "separation", "single_signal_spec"]

BASELINES = ("text.repetition", "text.zlib", "entropy", "text.length")
HORIZONS = (48, 64, 96)
RECALL = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval detect``: calibration's, plus where results go."""
    calibrate.add_arguments(parser)
    parser.add_argument("--folds", type=int, default=5, help="prompt-grouped cross-validation folds (0: skip)")
    parser.add_argument("--results", type=Path, default=Path("docs/evaluation/detect.json"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))


@dataclass
class Online:
    """How a detector behaves token by token on a set of generations."""

    fired: dict[str, int | None]

    def stats(self, generations: Sequence[Generation], reference: "Online | None" = None) -> dict:
        negatives = [g for g in generations if g.healthy]
        visible = [g for g in generations if g.label.kind == "visible"]
        bland = [g for g in generations if g.label.kind == "bland"]
        leads = [g.label.onset - self.fired[g.entry.key] for g in visible if self.fired[g.entry.key] is not None]
        out = {
            "fpr": _rate(self.fired, negatives),
            "recall_visible": _rate(self.fired, visible),
            "recall_bland": _rate(self.fired, bland),
            "median_lead_vs_text_detector": median_or_nan(leads),
            "share_before_text_detector": float(np.mean([x > 0 for x in leads])) if leads else float("nan"),
        }
        if reference is not None:
            paired = []
            for g in visible:
                mine, theirs = self.fired[g.entry.key], reference.fired[g.entry.key]
                if mine is not None:
                    paired.append((theirs if theirs is not None else g.length) - mine)
            out["median_lead_vs_best_baseline"] = median_or_nan(paired)
            out["share_before_best_baseline"] = float(np.mean([x > 0 for x in paired])) if paired else float("nan")
        return out


def _rate(fired: dict[str, int | None], generations: Sequence[Generation]) -> float:
    return float(np.mean([fired[g.entry.key] is not None for g in generations])) if generations else float("nan")


def single_signal_spec(name: str, tune: Sequence[Generation], args: argparse.Namespace) -> SignalThreshold:
    """One signal alone, EWMA-tracked, thresholded for ``target_fpr`` on normal tune generations."""
    negatives = [g for g in tune if g.healthy]
    spec = candidate_spec(name, "sink", "ewma", tune, negatives)
    trajectories = [g.values(name)[np.isfinite(g.values(name))] for g in negatives]
    threshold = fit_threshold(trajectories, spec, args.ewma_span, args.persistence, args.target_fpr)
    return SignalThreshold(name, spec.direction, threshold, "sink", "ewma", spec.mean, spec.std)


def separation(spec: SignalThreshold, generations: Sequence[Generation], args: argparse.Namespace) -> dict:
    """Generation-level separation of one signal (see the module docstring)."""

    def score(g: Generation, horizon: int | None = None) -> float:
        values = g.values(spec.name)
        return generation_score(values if horizon is None else values[:horizon], spec, args.ewma_span, args.persistence)

    negatives = [g for g in generations if not g.label.sink]
    visible = [g for g in generations if g.label.kind == "visible"]
    bland = [g for g in generations if g.label.kind == "bland"]
    out = {
        "auroc_visible": auroc([score(g) for g in visible], [score(g) for g in negatives]),
        "auroc_bland": auroc([score(g) for g in bland], [score(g) for g in negatives]),
        f"fpr_at_recall{int(RECALL * 100)}": fpr_at_recall(
            [score(g) for g in visible], [score(g) for g in negatives], RECALL
        ),
    }
    full = [g for g in generations if g.length >= args.max_tokens]
    out["auroc_length_matched"] = auroc(
        [score(g) for g in full if g.label.kind == "visible"], [score(g) for g in full if not g.label.sink]
    )
    for horizon in HORIZONS:
        early_pos = [score(g, horizon) for g in visible if g.label.onset >= horizon]
        early_neg = [score(g, horizon) for g in negatives if g.length >= horizon]
        out[f"auroc_early{horizon}"] = auroc(early_pos, early_neg)
        out[f"n_early{horizon}"] = len(early_pos)
    return out


def online(spec: SignalThreshold, generations: Sequence[Generation], args: argparse.Namespace) -> Online:
    """Where the single-signal online detector fires on each generation."""
    return Online(
        {g.entry.key: firing_token(g.values(spec.name), spec, args.ewma_span, args.persistence) for g in generations}
    )


def combined(calibration: Calibration, generations: Sequence[Generation]) -> Online:
    """Where the calibrated combined detector (the served one) fires on each generation."""
    return Online({g.entry.key: detect(calibration, g).fired_at for g in generations})


def best_baseline(tune: Sequence[Generation], args: argparse.Namespace) -> str:
    """The text-level baseline a user would pick from the tune split: the one earning the most detection
    credit (sinks caught, early) alone at the target false-positive rate."""

    def credit(name: str) -> float:
        fired = online(single_signal_spec(name, tune, args), tune, args).fired
        firing = np.array([-1 if fired[g.entry.key] is None else fired[g.entry.key] for g in tune])
        return detection_credit(firing, tune)[0]

    return max(BASELINES, key=credit)


def evaluate_split(args: argparse.Namespace, tune_entries: list, test_entries: list, figures: Path | None) -> dict:
    """Calibrate on ``tune_entries``, then measure everything on ``test_entries``."""
    calibration, tune, reference = calibrate.calibrate_on(args, tune_entries, offline=True)
    sampling = Sampling(calibrate.bands_of(args), window=args.window)
    test = build_generations(test_entries, args.corpus, sampling, reference, offline=True)
    baseline = best_baseline(tune, args)
    baseline_online = online(single_signal_spec(baseline, tune, args), test, args)
    signals = sorted(set().union(*(g.trajectories for g in tune)) & set().union(*(g.trajectories for g in test)))
    per_signal = {}
    for name in signals:
        try:
            spec = single_signal_spec(name, tune, args)
        except ValueError as problem:  # defined on too few tune generations to set a threshold
            per_signal[name] = {"skipped": str(problem)}
            continue
        per_signal[name] = {
            "direction": spec.direction,
            **separation(spec, test, args),
            **online(spec, test, args).stats(test, baseline_online),
        }
    result = {
        "counts": _counts(tune, test),
        "best_baseline": baseline,
        "combined": {
            "signals": [f"{s.name}/{s.method}" for s in calibration.signals],
            **combined(calibration, test).stats(test, baseline_online),
        },
        "ablations": _ablations(args, calibration, tune, test, reference, baseline_online),
        "signals": per_signal,
    }
    if figures is not None:
        from lab.eval.plots import plot_trajectories

        result["figures"] = plot_trajectories(test, calibration, figures)
    return result


def _ablations(args, calibration, tune, test, reference, baseline_online) -> dict:
    """The combined detector refitted from restricted signal families: what each family adds."""
    families = {
        "text_and_entropy_only": lambda n: n in ("entropy", "text.periodicity"),
        "hidden_state_only": lambda n: n not in ("entropy", "text.periodicity"),
        "without_probe": lambda n: n != "probe",
    }
    out = {}
    for family, keep in families.items():
        restricted = [_restrict(g, keep) for g in tune]
        fitted, _ = fit_calibration(
            calibration.model, calibration.bands, restricted, reference, calibrate.fit_options(args)
        )
        out[family] = {
            "signals": [f"{s.name}/{s.method}" for s in fitted.signals],
            **combined(fitted, [_restrict(g, keep) for g in test]).stats(test, baseline_online),
        }
    return out


def _restrict(g: Generation, keep) -> Generation:
    return Generation(g.entry, g.label, {n: v for n, v in g.trajectories.items() if keep(n)})


def _counts(tune: Sequence[Generation], test: Sequence[Generation]) -> dict:
    def count(gens):
        return {kind: sum(g.label.kind == kind for g in gens) for kind in ("negative", "visible", "bland")}

    return {"tune": count(tune), "test": count(test)}


def cross_validate(args: argparse.Namespace, entries: list) -> dict:
    """Prompt-grouped k-fold cross-validation of the combined detector and the probe over the whole corpus."""
    folds = []
    fold_of = {e.prompt_id: zlib.crc32(f"cv/{e.prompt_id}".encode()) % args.folds for e, _ in entries}
    for fold in range(args.folds):
        train = [(e, lab) for e, lab in entries if fold_of[e.prompt_id] != fold]
        held = [(e, lab) for e, lab in entries if fold_of[e.prompt_id] == fold]
        calibration, tune, reference = calibrate.calibrate_on(args, train)
        test = build_generations(
            held, args.corpus, Sampling(calibrate.bands_of(args), window=args.window), reference, False
        )
        stats = combined(calibration, test).stats(test)
        probe = separation(single_signal_spec("probe", tune, args), test, args)
        folds.append(
            {**stats, "probe_auroc_visible": probe["auroc_visible"], "probe_auroc_early64": probe["auroc_early64"]}
        )
        print(f"eval: fold {fold}: {json.dumps(folds[-1])}", flush=True)
    keys = folds[0].keys()
    return {
        k: {"mean": float(np.nanmean([f[k] for f in folds])), "std": float(np.nanstd([f[k] for f in folds]))}
        for k in keys
    }


def run(args: argparse.Namespace) -> dict:
    """Build what is missing, evaluate on the test split, cross-validate, write results and figures."""
    calibrate.ensure_corpus(args, None)
    entries = labelled_entries(args.corpus)
    tune_entries = [(e, lab) for e, lab in entries if e.split == "tune"]
    test_entries = [(e, lab) for e, lab in entries if e.split == "test"]
    print(f"eval: {len(tune_entries)} tune and {len(test_entries)} test generations")
    result = evaluate_split(args, tune_entries, test_entries, args.figures)
    if args.folds:
        result["cross_validation"] = cross_validate(args, entries)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps({k: result[k] for k in ("counts", "best_baseline", "combined")}, indent=1, default=float))
    print(f"eval: wrote {args.results}")
    return result
