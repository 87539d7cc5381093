"""``sinkwatch calibrate``: the served model's detector, fitted on its own generations (tune split only).

The corpus (:mod:`lab.eval.corpus`) is generated through the embedded engine once and cached;
calibration uses only the prompts of the tune split: normal prompts set the thresholds for
``--target-fpr`` false positives per normal generation, sink-prone prompts (loops, bland answers) teach
the probe and choose which signals the combined detector uses. The detector's false-positive rate on the
same normal generations is printed; ``sinkwatch eval detect`` measures it on the test split.
"""

import argparse
from pathlib import Path

from gateway.engine.provision import DEFAULT_MODEL, served_name
from lab.eval.corpus import CORPUS_VERSION, build_corpus, missing_jobs, state_shape
from lab.eval.dataset import build_generations, labelled_entries
from lab.eval.detection import detect
from lab.eval.fit import FitOptions, fit_calibration
from lab.eval.reference import fit_reference
from lab.eval.signals import Reference, Sampling, hold
from monitors.bands import default_bands, parse_bands
from monitors.calibration import Calibration, shipped_calibration_path

__all__ = [
    "add_arguments",
    "add_command_arguments",
    "bands_of",
    "calibrate_on",
    "ensure_corpus",
    "fit_options",
    "run",
    "run_command",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch calibrate`` (shared with ``sinkwatch eval``)."""
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--corpus", default=CORPUS_VERSION, help="cached corpus name under ~/.cache/sinkwatch/eval")
    parser.add_argument("--max-tokens", type=int, default=160, help="tokens per corpus generation")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--prompts-per-set", type=int, help="only the first prompts of each set (miniature corpora)")
    parser.add_argument("--bands", default="", help="layer bands (default: three thirds of the model)")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--ewma-span", type=int, default=8)
    parser.add_argument("--persistence", type=int, default=4)
    parser.add_argument("--target-fpr", type=float, default=0.05, help="per normal generation")
    parser.add_argument(
        "--per-1k-tokens", action="store_true", help="--target-fpr counts false alarms per 1,000 healthy tokens"
    )
    parser.add_argument("--max-signals", type=int, default=4, help="signals in the combined detector")
    parser.add_argument("--probe-layers", default="13,17", help="captured layers the linear probe reads")
    parser.add_argument("--probe-horizon", type=int, default=32, help="probe target: sink within this many tokens")
    parser.add_argument("--probe-folds", type=int, default=5, help="folds for the out-of-fold probe scores")
    parser.add_argument("--probe-l2", type=float, default=1e-2, help="ridge penalty (features standardised)")
    parser.add_argument(
        "--outlier-share", type=float, default=0.02, help="share of squared norm marking an outlier dim"
    )
    parser.add_argument("--output", type=Path, help="default: the calibration shipped for the model")


def add_command_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sinkwatch calibrate``: the shared ones, and calibrating from recorded traffic."""
    add_arguments(parser)
    parser.add_argument("-o", dest="output", type=Path, help="the same as --output")
    traffic = parser.add_argument_group("from recorded traffic (sinkwatch serve --policy observe --record-dir DIR)")
    traffic.add_argument(
        "--from-traffic",
        type=Path,
        metavar="DIR",
        help="fit thresholds on this recording instead of the corpus; --target-fpr then counts false alarms "
        "per 1,000 recorded tokens",
    )
    traffic.add_argument(
        "--base",
        type=Path,
        help="the calibration the recording was made with: its signals and reference are kept (default: "
        "--calibration's file, else the one shipped for the recorded model)",
    )
    traffic.add_argument(
        "--held-out", type=float, default=0.3, help="latest share of the recording checked, not fitted"
    )
    traffic.add_argument("--rank-fpr", type=float, default=0.05, help="healthy generations below a rank floor")
    traffic.add_argument(
        "--rank-levels",
        action="store_true",
        help="fit recurrence levels from the recording and no rank floors (for a model recorded without levels); "
        "restart with the result, record again, then fit that recording with --base the result for the floors",
    )


def fit_options(args: argparse.Namespace) -> FitOptions:
    """The detector-fit options named by the flags."""
    return FitOptions(
        args.window,
        args.ewma_span,
        args.persistence,
        args.target_fpr,
        args.max_signals,
        per_1k_tokens=args.per_1k_tokens,
    )


def ensure_corpus(args: argparse.Namespace, split: str | None) -> None:
    """Generate whatever part of the corpus is missing (nothing when it is cached)."""
    from gateway.engine.loader import load_model
    from gateway.engine.provision import provision

    if missing_jobs(args.max_tokens, args.corpus, split, args.prompts_per_set):
        loaded = load_model(provision(args.model), served_name(args.model))
        build_corpus(loaded, args.max_tokens, args.max_batch, args.corpus, split, args.prompts_per_set)


def bands_of(args: argparse.Namespace) -> tuple:
    """The bands named by ``--bands``, else the default thirds."""
    return parse_bands(args.bands) if args.bands else default_bands(state_shape(args.corpus)[0])


def calibrate_on(
    args: argparse.Namespace, entries: list, offline: bool = False, sampling: Sampling | None = None
) -> tuple[Calibration, list, Reference]:
    """Fit reference and detector on these labelled entries (as ``sampling`` observes them).

    Returns the calibration, the entries' generations (their ``probe`` trajectory is the out-of-fold one
    the thresholds were set on) and the reference.
    """
    sampling = sampling or Sampling(bands_of(args), window=args.window)
    bands = sampling.bands
    probe_layers = [int(x) for x in args.probe_layers.split(",")]
    reference, out_of_fold = fit_reference(
        entries,
        args.corpus,
        probe_layers,
        args.probe_horizon,
        args.outlier_share,
        args.probe_l2,
        sampling.projection_matrix(state_shape(args.corpus)[1]),
        args.probe_folds,
    )
    generations = build_generations(entries, args.corpus, sampling, reference, offline)
    for g in generations:
        if g.entry.key in out_of_fold:
            g.trajectories["probe"] = hold(out_of_fold[g.entry.key], sampling.stride)
    calibration, _ = fit_calibration(served_name(args.model), bands, generations, reference, fit_options(args))
    return calibration, generations, reference


def run_command(args: argparse.Namespace) -> Calibration:
    """``sinkwatch calibrate``: fit on a recording (``--from-traffic``), else on the corpus (:func:`run`)."""
    if args.from_traffic is not None:
        from lab.eval.traffic_command import run_from_traffic

        return run_from_traffic(args)
    return run(args)


def run(args: argparse.Namespace) -> Calibration:
    """Generate (if needed), fit on the tune split, measure, write."""
    ensure_corpus(args, "tune")
    entries = [(e, lab) for e, lab in labelled_entries(args.corpus) if e.split == "tune"]
    print(f"calibrate: {len(entries)} labelled tune generations from corpus {args.corpus}")
    calibration, generations, _ = calibrate_on(args, entries)
    normal = [g for g in generations if g.healthy]
    fired = sum(detect(calibration, g).fired_at is not None for g in normal)
    print(f"calibrate: signals {[f'{s.name}/{s.method}' for s in calibration.signals]}")
    print(f"calibrate: the detector fires on {fired}/{len(normal)} normal tune generations")
    output = args.output or shipped_calibration_path(calibration.model)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(calibration.to_json())
    print(f"calibrate: wrote {output}")
    return calibration
