"""Fitting the combined detector: the union of signals respects the false-positive budget on normal traffic."""

import numpy as np

from lab.eval.corpus import CorpusEntry
from lab.eval.dataset import Generation
from lab.eval.labels import Label
from lab.eval.thresholds import candidate_spec, combine, select_signals, track


def _generation(i: int, sink: bool, rng) -> Generation:
    entry = CorpusEntry(f"g{i}", f"p{i}", "normal", "tune", "t", 0.7, 1.0, [1], list(range(60)), "", "length")
    onset = 40 if sink else None
    signal = rng.normal(0.0, 1.0, 60)
    noise = rng.normal(0.0, 1.0, 60)
    if sink:
        signal[30:] += 3.0  # the informative signal rises 10 tokens before the text onset
    label = Label("visible", onset) if sink else Label("negative")
    return Generation(entry, label, {"good": signal, "noise": noise})


def _corpus(seed: int = 0) -> list[Generation]:
    rng = np.random.default_rng(seed)
    return [_generation(i, i % 3 == 0, rng) for i in range(300)]


def test_the_union_of_signals_fires_on_at_most_the_target_share_of_normal_generations():
    gens = _corpus()
    negatives = [g for g in gens if not g.label.sink]
    tracks = [track(candidate_spec(n, "sink", "ewma", gens, negatives), gens, 4, 3) for n in ("good", "noise")]
    firing, _, fpr = combine(tracks, gens, 0.05)
    assert fpr <= 0.05
    assert np.mean([f >= 0 for f, g in zip(firing, gens, strict=True) if not g.label.sink]) == fpr


def test_selection_keeps_the_informative_signal_and_drops_the_noise():
    gens = _corpus(1)
    negatives = [g for g in gens if not g.label.sink]
    candidates = [candidate_spec(n, "sink", "ewma", gens, negatives) for n in ("good", "noise")]
    selection = select_signals(candidates, gens, span=4, persistence=3, target_fpr=0.05, max_signals=2)
    assert [s.name for s in selection.signals] == ["good"]
    assert selection.caught >= 0.9 * selection.sinks
    assert selection.median_lead > 0


def test_cross_fitted_thresholds_are_at_least_as_conservative_as_in_sample_ones():
    gens = _corpus(2)
    negatives = [g for g in gens if not g.label.sink]
    tracks = [track(candidate_spec(n, "sink", "ewma", gens, negatives), gens, 4, 3) for n in ("good", "noise")]
    assert combine(tracks, gens, 0.05, cross_fit=True)[2] <= combine(tracks, gens, 0.05)[2]
