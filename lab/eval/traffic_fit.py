"""``sinkwatch calibrate --from-traffic DIR``: thresholds fitted to a target alarm rate on recorded, unlabelled
traffic, checked on later traffic the fit never saw.

Without labels nothing says which signals separate loops from healthy answers, so the signals, their sides and
their tracking (EWMA span, persistence, CUSUM) are the base calibration's (the one the recording was made with,
chosen on labelled data); what the traffic sets is where each one alarms, for this model and these users. A
recording made with no calibration in force has no base: :mod:`lab.eval.traffic_defaults` supplies one (a
model-independent signal set on the recorded setup, and the visible-loop rule the filter then uses).

- **Sinks in the traffic.** Before fitting, generations the base calibration's own text signal calls a visible
  loop (``text.periodicity`` tracked as the base tracks it, held past the base's threshold) are dropped: a
  loop's third occurrence drives that signal to 1, which healthy text does not reach. The thresholds are then
  quantiles of per-generation extremes at the target rate, so sinks the filter misses can only raise them
  (fewer alarms, later catches), never cause alarms; how far they move is measured by injecting labelled loops
  (``sinkwatch eval traffic-tolerance``).
- **Rate.** ``--target-fpr`` counts alarms per 1,000 tokens of the kept traffic (the shipped calibration's
  unit); every threshold is set with cross-fitting (:func:`lab.eval.thresholds.combine`), so the rate holds
  on generations the fit has not seen.
- **Out of sample.** The recording is split by time: the fit uses the earlier generations, the later
  ``--held-out`` share is judged by the fitted thresholds; the held-out alarm rate of the sink signals per
  1,000 tokens of generations that do not visibly loop, the share of those below a rank floor, and how many
  held-out visible loops the sink signals catch are printed and stored in the calibration's ``notes``.
  With few recorded tokens the alarm rate cannot be set finer than one alarm in the whole fit part: a
  threshold then sits at the highest healthy value seen, and later traffic passes it about once per
  fit-part generation per signal (see docs/EVALUATION.md, "Calibrating from traffic").
- **Rank floors.** :func:`monitors.rank_exhaustion.fit_rank_floors` on each kept generation's lowest tracked
  novel PR per band (computed with the recording's recurrence levels), at ``--rank-fpr`` per generation.
- **Recurrence levels** (``--rank-levels``). The novel PR needs levels, and a recording made without them (an
  uncalibrated model) holds no novel PR: the fit then sets each band's level to the median of its kept
  generations' recorded recurrence (:func:`monitors.rank_exhaustion.band_recurrence_levels`; a recording holds
  band means, not layers) and fits no floors. Served with the result, the gateway computes the novel PR; a
  second recording, fitted with that calibration as ``--base``, gives the floors. New levels change the
  features: a gateway on the embedded engine takes them on a restart, not a reload; behind vLLM the plugin
  takes the file itself and the gateway on SIGHUP.
"""

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lab.eval.rank_corpus import novel_pr_lows
from lab.eval.rank_floors import wilson
from lab.eval.thresholds import alarm_rate, combine, track
from lab.eval.traffic import RecordedGeneration, SetupMismatch, by_time, recording_setup
from lab.eval.traffic_defaults import VISIBLE_LOOP
from monitors.calibration import Calibration, SignalThreshold
from monitors.detector import PERIODICITY_SIGNAL
from monitors.rank_exhaustion import LEVEL_QUANTILE, band_recurrence_levels, fit_rank_floors, rank_overlay

__all__ = [
    "TrafficFit",
    "TrafficFitOptions",
    "check_setup",
    "firing",
    "fit_from_traffic",
    "fit_split",
    "is_visible_loop",
    "loop_rule",
]


@dataclass(frozen=True)
class TrafficFitOptions:
    """Knobs of the traffic fit (flags of ``sinkwatch calibrate --from-traffic``)."""

    target_fpr: float = 0.05  # false alarms per 1,000 tokens of kept traffic
    rank_fpr: float = 0.05  # healthy generations below a rank floor (the shipped floors' rate)
    held_out: float = 0.3  # the latest share of the recording, judged but never fitted on
    drop_loops: bool = True  # leave visible loops out of the fit (off only to measure what it buys)
    fit_levels: bool = False  # refit the recurrence levels from the recorded recurrence (then no floors)


@dataclass
class TrafficFit:
    """The fitted calibration and what the fit saw and measured."""

    calibration: Calibration
    report: dict[str, Any]


def check_setup(base: Calibration, setup: dict[str, Any]) -> None:
    """The recording's signals must come from the base's setup (bands, window, extractor reference)."""
    expected = recording_setup(base)
    differing = [name for name, value in expected.items() if setup.get(name) != value]
    if differing:
        raise SetupMismatch(
            f"the recording was made with another setup than the base calibration ({', '.join(differing)} differ: "
            f"recorded under {setup.get('calibration')}); pass that calibration as --base"
        )


def loop_rule(base: Calibration) -> SignalThreshold:
    """What calls a generation a visible loop: the base's text signal at its level, or, when the base has no
    fitted text signal (a recording made uncalibrated), the model-independent :data:`VISIBLE_LOOP`."""
    spec = next((s for s in base.signals if s.name == PERIODICITY_SIGNAL), None)
    return spec if spec is not None and np.isfinite(spec.threshold) else VISIBLE_LOOP


def is_visible_loop(generation: RecordedGeneration, base: Calibration) -> bool:
    """Whether the text signal holds past the loop level of :func:`loop_rule` on this generation."""
    return generation.holds_above(loop_rule(base), base.ewma_span, base.persistence)


def _loop_filter(base: Calibration) -> str:
    rule = loop_rule(base)
    source = "the default visible-loop rule" if rule is VISIBLE_LOOP else "the base calibration's level"
    return f"{PERIODICITY_SIGNAL} held past {rule.threshold:.4g} ({source})"


def _refit_spec(spec: SignalThreshold, generations: Sequence[RecordedGeneration]) -> SignalThreshold:
    """The base's signal, its normal mean and spread taken from this traffic, threshold unset."""
    values = np.concatenate([g.values(spec.name)[np.isfinite(g.values(spec.name))] for g in generations])
    return replace(spec, threshold=float("nan"), mean=float(values.mean()), std=float(values.std() + 1e-9))


def _recorded_levels(generations: Sequence[RecordedGeneration], base: Calibration) -> dict[int, float]:
    """Recurrence levels from the generations' recorded band recurrence (see the module's description)."""
    recurrence = {}
    for band in base.bands:
        values = np.concatenate([g.values(f"{band.name}.recurrence") for g in generations])
        recurrence[band.name] = values[np.isfinite(values)]
    return band_recurrence_levels(recurrence, {band.name: band.layers for band in base.bands}, LEVEL_QUANTILE)


def _floors_note(floors: dict[str, float], fitted_levels: bool) -> str:
    """What the report says of the rank floors."""
    if floors:
        return "fitted on the recorded novel participation ratio"
    if fitted_levels:
        return (
            "none yet: recurrence levels fitted; serve this calibration (embedded engine: a restart; behind vLLM: "
            "SIGHUP) with --record-dir, then calibrate --from-traffic that recording with --base this file"
        )
    return "none: the recording holds no novel participation ratio (recorded without recurrence levels: --rank-levels)"


def _with_rank_margins(generations: Sequence[RecordedGeneration], floors: dict[str, float]) -> None:
    """Add ``<band>.rank_margin`` (novel PR minus floor) to every generation, as the detector computes it."""
    for g in generations:
        for band, floor in floors.items():
            g.trajectories[f"{band}.rank_margin"] = g.values(f"{band}.pr_novel") - floor


def _rank_share(held: Sequence[RecordedGeneration], fired: np.ndarray, healthy: np.ndarray) -> dict[str, Any]:
    """How many held-out generations that do not visibly loop go below a rank floor: their share (with a 95 %
    Wilson interval), and [fired, generations] in all and by how they were sampled (greedy or not)."""
    greedy = np.array([not g.sampling.get("temperature") for g in held], dtype=bool)
    by_sampling = {
        name: [int((fired & healthy & part).sum()), int((healthy & part).sum())]
        for name, part in (("greedy", greedy), ("sampled", ~greedy))
    }
    fired_healthy, total = int((fired & healthy).sum()), int(healthy.sum())
    return {
        "held_out_rank_share": round(fired_healthy / total, 4) if total else None,
        "held_out_rank_fired": [fired_healthy, total],
        "held_out_rank_share_ci95": [round(x, 4) for x in wilson(fired_healthy, total)] if total else None,
        "held_out_rank_by_sampling": by_sampling,
    }


def firing(
    signals: Sequence[SignalThreshold], generations: Sequence[RecordedGeneration], span: int, persistence: int
) -> np.ndarray:
    """Per generation, the first token where any signal holds past its threshold for its persistence (-1:
    none), from the recorded trajectories."""
    first = np.full(len(generations), -1)
    for spec in signals:
        tracked_ = track(spec, generations, span, persistence)
        oriented = -spec.threshold if spec.method == "ewma" and spec.direction == "low" else spec.threshold
        fired = tracked_.firing(oriented)
        first = np.where((first < 0) | ((fired >= 0) & (fired < first)), fired, first)
    return first


def fit_from_traffic(
    generations: Sequence[RecordedGeneration], base: Calibration, options: TrafficFitOptions
) -> TrafficFit:
    """Fit on the earlier generations, check on the later ones (see the module's description)."""
    if not generations:
        raise ValueError("no recorded generations to calibrate on")
    fit_part, held = by_time(generations, options.held_out)
    return fit_split(fit_part, held, base, options)


def fit_split(
    fit_part: Sequence[RecordedGeneration],
    held: Sequence[RecordedGeneration],
    base: Calibration,
    options: TrafficFitOptions,
) -> TrafficFit:
    """Fit on ``fit_part``, check on ``held`` (the later traffic)."""
    check_setup(base, fit_part[0].setup)
    kept = [g for g in fit_part if not (options.drop_loops and is_visible_loop(g, base))]
    available = set().union(*(g.trajectories for g in kept)) if kept else set()
    specs = [_refit_spec(s, kept) for s in base.signals if s.family == "sink" and s.name in available]
    if not specs:
        raise ValueError("the recording has none of the base calibration's signals long enough to fit on")
    tracks = [track(spec, kept, base.ewma_span, base.persistence) for spec in specs]
    _, thresholds, fit_rate = combine(tracks, kept, options.target_fpr, cross_fit=True, per_1k_tokens=True)
    sink_signals = [replace(t.spec, threshold=t.oriented(th)) for t, th in zip(tracks, thresholds, strict=True)]
    bands = [band.name for band in base.bands]
    if options.fit_levels:
        levels = _recorded_levels(kept, base)
        floors: dict[str, float] = {}  # the recorded novel PR (if any) was computed with other levels
    else:
        levels = base.recurrence_levels
        floors = fit_rank_floors(
            [novel_pr_lows(g.trajectories, bands, base.ewma_span, base.persistence) for g in kept], options.rank_fpr
        )
    overlay = rank_overlay(levels, floors, base.persistence, {})
    rank_signals = [SignalThreshold(**s) for s in overlay["signals"]]
    signals = sink_signals + rank_signals
    _with_rank_margins([*kept, *held], floors)
    held_loops = np.array([is_visible_loop(g, base) for g in held], dtype=bool)
    held_sink = firing(sink_signals, held, base.ewma_span, base.persistence) >= 0
    held_rank = firing(rank_signals, held, base.ewma_span, base.persistence) >= 0
    held_healthy = ~held_loops
    report = {
        "source": "recorded traffic (sinkwatch calibrate --from-traffic)",
        "target_unit": "false alarms per 1,000 tokens",
        "recorded_under": fit_part[0].setup.get("calibration"),
        "fit_generations": len(fit_part),
        "fit_visible_loops_dropped": len(fit_part) - len(kept),
        "fit_tokens": int(sum(g.length for g in kept)),
        "fit_rate": round(fit_rate, 4),
        "held_out_generations": len(held),
        "held_out_tokens": int(sum(g.length for g, ok in zip(held, held_healthy, strict=True) if ok)),
        "held_out_rate": (
            round(alarm_rate(held_sink, held, held_healthy, per_1k_tokens=True), 4) if held_healthy.any() else None
        ),
        **_rank_share(held, held_rank, held_healthy),
        "held_out_visible_loops": int(held_loops.sum()),
        "held_out_loops_caught": int((held_sink & held_loops).sum()),
        "split": f"by time: the latest {options.held_out:.0%} held out",
        "loop_filter": _loop_filter(base) if options.drop_loops else "off",
        "rank_fpr_per_generation": options.rank_fpr,
        "rank_floors": _floors_note(floors, options.fit_levels),
    }
    calibration = replace(
        base,
        model=fit_part[0].model,
        target_fpr=options.target_fpr,
        target_unit="per_1k_tokens",
        signals=tuple(signals),
        rank_floors=floors,
        recurrence_levels=levels,
        n_generations=len(kept),
        created=datetime.date.today().isoformat(),
        expected_lead_tokens=None,
        risk=None,  # the risk curve needs labels; a traffic calibration has none
        notes=report,
    )
    return TrafficFit(calibration, report)
