"""Fit a full detector calibration from labelled tune-split generations (used by calibrate and by eval)."""

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from lab.eval.dataset import Generation
from lab.eval.detection import detect
from lab.eval.signals import Reference
from lab.eval.thresholds import Selection, candidate_spec, fold_of, rank_floor, select_signals
from monitors.bands import LayerBand, captured_layers
from monitors.calibration import Calibration, SignalThreshold
from monitors.detector import PERIODICITY_SIGNAL
from monitors.risk import fit_risk

__all__ = ["FitOptions", "fit_calibration"]

RANK_METRICS = ("pr", "pr_clip", "eff_rank")
SINK_METRICS = ("cosine", "cosine_clip", "drift", "recurrence")
GLOBAL_SIGNALS = ("entropy", PERIODICITY_SIGNAL, "probe", "path")


@dataclass(frozen=True)
class FitOptions:
    """Knobs of the detector fit (CLI flags of ``sinkwatch calibrate``)."""

    window: int = 32
    ewma_span: int = 8
    persistence: int = 4
    target_fpr: float = 0.05
    max_signals: int = 4
    per_1k_tokens: bool = False
    # Signals the combined detector always has; hidden-state signals join only where they add.
    required: tuple[str, ...] = (PERIODICITY_SIGNAL,)
    methods: tuple[str, ...] = ("ewma", "cusum")
    # (EWMA span, persistence) pairs tried per signal besides the calibration-wide ones: quicker reactions
    # trade against more false alarms, so the tune split decides.
    reactions: tuple[tuple[int, int], ...] = ((2, 2), (1, 1))


def candidates(bands: Sequence[LayerBand], tune: Sequence[Generation], options: FitOptions) -> list[SignalThreshold]:
    """Every signal the served extractor produces, each with each tracking method."""
    negatives = [g for g in tune if g.healthy]
    names = [(n, "sink") for n in GLOBAL_SIGNALS]
    names += [(f"{b.name}.{m}", "rank") for b in bands for m in RANK_METRICS]
    names += [(f"{b.name}.{m}", "sink") for b in bands for m in SINK_METRICS]
    available = set().union(*(g.trajectories for g in tune))
    out = []
    for name, family in names:
        if name not in available:
            continue
        for method in options.methods:
            spec = candidate_spec(name, family, method, tune, negatives)
            out.append(spec)
            if method == "ewma":
                out += [replace(spec, span=span, persistence=p) for span, p in options.reactions]
    return out


def fit_calibration(
    model: str, bands: tuple[LayerBand, ...], tune: Sequence[Generation], reference: Reference, options: FitOptions
) -> tuple[Calibration, Selection]:
    """Select and threshold the combined detector's signals; floors for the rank margins; the risk model
    (isotonic on each tune generation's out-of-fold detector score against its label); the calibration."""
    candidate_list = candidates(bands, tune, options)
    selection = select_signals(
        candidate_list,
        tune,
        options.ewma_span,
        options.persistence,
        options.target_fpr,
        options.max_signals,
        options.per_1k_tokens,
        [name for name in options.required if any(c.name == name for c in candidate_list)],
    )
    floors = {
        b.name: rank_floor(f"{b.name}.pr", tune, options.ewma_span, options.persistence, options.target_fpr)
        for b in bands
    }
    floors = {band: floor for band, floor in floors.items() if np.isfinite(floor)}
    layers = captured_layers(bands)
    calibration = Calibration(
        model=model,
        window=options.window,
        bands=bands,
        ewma_span=options.ewma_span,
        persistence=options.persistence,
        min_agreeing=1,
        target_fpr=options.target_fpr,
        target_unit="per_1k_tokens" if options.per_1k_tokens else "generations",
        signals=tuple(selection.signals),
        rank_floors=floors,
        mean_states={layer: [round(float(x), 5) for x in reference.mean_states[layer]] for layer in layers},
        n_generations=len(tune),
        created=datetime.date.today().isoformat(),
        outlier_dims={layer: reference.outlier_dims.get(layer, []) for layer in layers},
        probe=reference.probe,
        expected_lead_tokens=None if np.isnan(selection.median_lead) else selection.median_lead,
        notes={
            "tune_fpr": round(selection.fpr, 4),
            "tune_sinks_caught": f"{selection.caught}/{selection.sinks}",
            "selection": "greedy forward selection judged out of fold over tune prompts (lab/eval/thresholds.py)",
        },
    )
    # The risk model learns from scores each tune generation gets from thresholds set without its prompt: on
    # the thresholds' own generations healthy and sinking separate perfectly, which would promise a certainty
    # that new traffic does not keep.
    scores = [detect(replace(calibration, signals=tuple(selection.fold_signals[fold_of(g)])), g).score for g in tune]
    return replace(calibration, risk=fit_risk(scores, [g.label.sink for g in tune])), selection
