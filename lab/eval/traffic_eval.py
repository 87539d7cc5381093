"""A calibration made from recorded traffic, judged on labelled generations it never saw (``sinkwatch eval
traffic``): false alarms per 1,000 healthy tokens and loops caught on the production-like corpus's test split
(the held-out split of the verdicts issue, ``sinkwatch eval verdicts``), per traffic type and length, next to
the shipped calibration; and how many sinks the recording may hold before the fit suffers.

**Tolerance.** The recording's generations that no client pushed toward a loop (no inducing penalty or bias)
and that do not visibly loop are the clean traffic, split by time into fit and held-out parts. Into the fit
part go ``k`` % labelled sinks of the corpus's *tune* split (their trajectories computed with the recording's
calibration; drawn with replacement when more are needed than there are), for each ``k`` of ``--inject``;
each mixture is fitted with the loop filter on and off, and reported: the thresholds, the false alarms on the
clean held-out traffic and, on the test split, false alarms and loops caught. Rank signals are left out of
the test-split figures, as ``sinkwatch eval verdicts`` leaves them (replayed corpus states carry no novel PR).
"""

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from gateway.engine.provision import cache_root
from lab.eval.corpus import PRODUCTION_CORPUS
from lab.eval.dataset import Generation, build_generations, labelled_entries
from lab.eval.signals import Reference, Sampling
from lab.eval.traffic import RecordedGeneration, by_time, read_recording
from lab.eval.traffic_fit import TrafficFitOptions, firing, fit_split, is_visible_loop
from lab.eval.verdicts_eval import breakdown, firing_of
from monitors.calibration import Calibration, load_calibration

__all__ = ["INDUCING", "TRAFFIC_CALIBRATION", "TRAFFIC_RECORDING", "add_arguments", "clean_traffic", "run"]

# The recording of the production-like tune prompts through the embedded gateway (docs/EVALUATION.md,
# "Calibrating from traffic"), and the calibration fitted on it.
TRAFFIC_RECORDING = cache_root() / "traffic" / "smollm2-tune"
TRAFFIC_CALIBRATION = Path("docs/evaluation/smollm2-135m-instruct.traffic.json")

# Sampling a client sets that pushes the model toward a loop (the corpus's inducers).
INDUCING = {
    "repetition_penalty": lambda v: v < 1,
    "frequency_penalty": lambda v: v < 0,
    "presence_penalty": lambda v: v < 0,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch eval traffic``."""
    parser.add_argument(
        "--recording", type=Path, default=TRAFFIC_RECORDING, help="the recording the calibration was fitted on"
    )
    parser.add_argument("--calibration", type=Path, default=TRAFFIC_CALIBRATION, help="the calibration fitted on it")
    parser.add_argument(
        "--base", default="SmolLM2-135M-Instruct", help="the calibration the recording was made with (compared with)"
    )
    parser.add_argument("--corpus", default=PRODUCTION_CORPUS)
    parser.add_argument("--inject", default="0,1,2,5,10,20", help="percentages of sinks injected")
    parser.add_argument("--target-fpr", type=float, default=0.05, help="false alarms per 1,000 tokens")
    parser.add_argument("--held-out", type=float, default=0.3)
    parser.add_argument("--results", type=Path, default=Path("docs/evaluation/traffic.json"))


def clean_traffic(generations: Sequence[RecordedGeneration], base: Calibration) -> list[RecordedGeneration]:
    """Recorded generations no client pushed toward a loop and that do not visibly loop."""

    def induced(g: RecordedGeneration) -> bool:
        sampling = g.sampling
        biased = bool(sampling.get("logit_bias"))
        return biased or any(name in sampling and test(sampling[name]) for name, test in INDUCING.items())

    return [g for g in generations if not induced(g) and not is_visible_loop(g, base)]


def _corpus_generations(args: argparse.Namespace, calibration: Calibration, split: str) -> list[Generation]:
    entries = [(e, lab) for e, lab in labelled_entries(args.corpus) if e.split == split]
    reference = Reference(calibration.mean_state_arrays(), dict(calibration.outlier_dims), calibration.probe)
    return build_generations(
        entries, args.corpus, Sampling(calibration.bands, window=calibration.window), reference, False
    )


def _as_recorded(g: Generation, like: RecordedGeneration) -> RecordedGeneration:
    """A labelled corpus generation in the shape of a recorded one (the recorded signals only)."""
    names = set(like.trajectories)
    trajectories = {n: v for n, v in g.trajectories.items() if n in names}
    return RecordedGeneration(
        g.entry.key, like.time, g.length, g.entry.finish_reason, like.model, like.setup, trajectories
    )


def _sink_only(calibration: Calibration) -> Calibration:
    return replace(calibration, signals=tuple(s for s in calibration.signals if s.family == "sink"))


def _tolerance(
    args: argparse.Namespace,
    clean: list[RecordedGeneration],
    sinks: list[Generation],
    test: list[Generation],
    base: Calibration,
) -> list[dict]:
    fit_part, held = by_time(clean, args.held_out)
    rng = np.random.default_rng(0)
    rows = []
    for k in (float(x) for x in args.inject.split(",")):
        count = round(k / (100 - k) * len(fit_part))
        drawn = [sinks[i] for i in rng.choice(len(sinks), count, replace=count > len(sinks))] if count else []
        injected = [replace(_as_recorded(g, fit_part[0]), key=f"sink{i}:{g.entry.key}") for i, g in enumerate(drawn)]
        for drop_loops in (True, False):
            options = TrafficFitOptions(args.target_fpr, 0.05, args.held_out, drop_loops)
            fitted = fit_split([*fit_part, *injected], held, base, options)
            sink = _sink_only(fitted.calibration)
            held_alarms = int((firing(sink.signals, held, base.ewma_span, base.persistence) >= 0).sum())
            on_test = breakdown(test, firing_of(sink, test))["all"]
            rows.append(
                {
                    "injected_percent": k,
                    "injected_sinks": count,
                    "visible_among_injected": sum(g.label.kind == "visible" for g in drawn),
                    "loop_filter": drop_loops,
                    "dropped_by_filter": fitted.report["fit_visible_loops_dropped"],
                    "thresholds": {s.name: round(s.threshold, 4) for s in sink.signals},
                    "held_out_clean_false_alarms_per_1k": round(1000 * held_alarms / sum(g.length for g in held), 4),
                    "test_false_alarms_per_1k": on_test["false_alarms_per_1k_tokens"],
                    "test_loops_caught": f"{on_test['loops_caught']}/{on_test['loops']}",
                    "test_recall": on_test["recall"],
                }
            )
            print(json.dumps(rows[-1]))
    return rows


def run(args: argparse.Namespace) -> dict:
    """Judge the calibration and the comparison on the test split; measure tolerance; write the results."""
    calibration = load_calibration(args.calibration)
    base = load_calibration(args.base)
    test = _corpus_generations(args, calibration, "test")
    result: dict = {"corpus": args.corpus, "split": "test", "calibrations": {}}
    for name, judged in (("traffic", calibration), ("base", base)):
        sink = _sink_only(judged)
        result["calibrations"][name] = {
            "calibration": f"{judged.model}@{judged.created}",
            "notes": judged.notes,
            "thresholds": {s.name: round(s.threshold, 4) for s in sink.signals},
            "test": breakdown(test, firing_of(sink, test)),
        }
        print(f"{name}: {json.dumps(result['calibrations'][name]['test']['all'])}")
    generations, _ = read_recording(args.recording)
    clean = clean_traffic(generations, base)
    tune = _corpus_generations(args, calibration, "tune")
    sinks = [g for g in tune if g.label.sink]
    result["tolerance"] = {
        "clean_recorded_generations": len(clean),
        "tune_sinks_available": len(sinks),
        "rows": _tolerance(args, clean, sinks, test, base),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1))
    print(f"traffic: wrote {args.results}")
    return result
