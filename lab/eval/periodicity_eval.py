"""Which periodicity tracker to serve (``sinkwatch eval periodicity``): longer periods, period jitter and
shorter windows, compared on the tune split only, out of fold, with their cost per token.

Each variant of :class:`monitors.text.PeriodicityTracker` replaces the ``text.periodicity`` trajectory of
every tune generation; the detector is refitted as ``sinkwatch calibrate --corpus production-v1
--per-1k-tokens`` fits it (the full selection, and the periodicity signal alone) and judged on each
prompt-grouped fold thresholded without its prompts: false alarms per 1,000 healthy tokens, loops caught,
onset against the 4-gram rule. The choice is the variant with the most loops caught out of fold without
more out-of-fold false alarms than the served tracker, then the earliest, then the cheapest. The test
split is never read.
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lab.eval import calibrate
from lab.eval.corpus import PRODUCTION_CORPUS
from lab.eval.dataset import Generation, labelled_entries
from lab.eval.fit import fit_calibration
from lab.eval.periodicity_variants import SERVED, Variant, tokens_per_second, with_variant
from lab.eval.signals import Reference
from lab.eval.verdicts_eval import group_stats, out_of_fold, restricted
from monitors.calibration import Calibration
from monitors.detector import PERIODICITY_SIGNAL

__all__ = ["add_arguments", "choose", "run"]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval periodicity``: calibration's (on the production-like corpus), the grid."""
    calibrate.add_arguments(parser)
    parser.set_defaults(corpus=PRODUCTION_CORPUS, per_1k_tokens=True, probe_folds=3)
    parser.add_argument("--max-periods", type=_ints, default=[64, 128, 192, 256])
    parser.add_argument("--jitters", type=_ints, default=[0, 1, 2])
    parser.add_argument("--windows", type=_ints, default=[8, 12, 16])
    parser.add_argument("--results", type=Path, default=Path("docs/evaluation/periodicity.json"))


def measure(
    variant: Variant, tune: Sequence[Generation], base: Calibration, reference: Reference, args: argparse.Namespace
) -> dict:
    """The variant's out-of-fold tune results, for the full selection and for the periodicity signal alone."""
    options = calibrate.fit_options(args)
    generations = with_variant(tune, variant)
    speed = tokens_per_second(variant, [t for g in tune for t in g.entry.output_ids])
    out: dict = {"variant": variant.options(), "tokens_per_second": round(speed)}
    for name, keep in (("selection", lambda n: True), ("alone", lambda n: n == PERIODICITY_SIGNAL)):
        among = restricted(generations, keep)
        fitted, _ = fit_calibration(base.model, base.bands, among, reference, options)
        out[name] = {
            "signals": [f"{s.name}/{s.method}" for s in fitted.signals],
            "threshold": next(round(s.threshold, 4) for s in fitted.signals if s.name == PERIODICITY_SIGNAL),
            "out_of_fold": group_stats(generations, out_of_fold(fitted, among, options)),
        }
    return out


def choose(results: Sequence[dict], served: dict) -> dict:
    """Most loops caught out of fold (full selection) without more out-of-fold false alarms than the served
    tracker; then the earliest median onset; then the most tokens per second."""
    allowed = served["selection"]["out_of_fold"]["false_alarms"]

    def key(r: dict) -> tuple:
        s = r["selection"]["out_of_fold"]
        lead = s["median_lead_over_text_detector"]
        return (s["loops_caught"], -np.inf if lead is None else lead, r["tokens_per_second"])

    return max((r for r in results if r["selection"]["out_of_fold"]["false_alarms"] <= allowed), key=key)


def _row(r: dict) -> str:
    cells = [Variant(**r["variant"]).name, str(r["tokens_per_second"])]
    for name in ("selection", "alone"):
        s = r[name]["out_of_fold"]
        cells += [f"{s['false_alarms']} ({s['false_alarms_per_1k_tokens']:g})", f"{s['loops_caught']}/{s['loops']}"]
        cells.append("–" if s["median_lead_over_text_detector"] is None else f"{s['median_lead_over_text_detector']:g}")
    return "| " + " | ".join(cells) + " |"


def table(results: Sequence[dict]) -> str:
    """The markdown table of docs/EVALUATION.md (tune split, out of fold)."""
    head = (
        "| tracker (tune, out of fold) | tokens/s | selection: false alarms (per 1k) | loops | lead | "
        "periodicity alone: false alarms (per 1k) | loops | lead |\n|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *(_row(r) for r in results)])


def run(args: argparse.Namespace) -> dict:
    """Fit the reference once on tune, then measure every variant on tune; write and print the table."""
    tune_entries = [(e, lab) for e, lab in labelled_entries(args.corpus) if e.split == "tune"]
    print(f"periodicity: {len(tune_entries)} tune labelled generations (the test split is not read)")
    base, tune, reference = calibrate.calibrate_on(args, tune_entries)
    variants = [Variant(p, j, w) for p in args.max_periods for j in args.jitters for w in args.windows]
    results = []
    for variant in dict.fromkeys([SERVED, *variants]):
        results.append(measure(variant, tune, base, reference, args))
        print(_row(results[-1]), flush=True)
    chosen = choose(results, results[0])
    summary = {"corpus": args.corpus, "split": "tune", "served": results[0], "chosen": chosen, "variants": results}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(summary, indent=1))
    print(table(results))
    print(f"periodicity: chosen {Variant(**chosen['variant']).name}; wrote {args.results}")
    return summary
