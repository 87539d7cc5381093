"""``sinkwatch eval verdicts``: false alarms are counted per 1,000 healthy tokens, loops and leads per group."""

from lab.eval.corpus import CorpusEntry
from lab.eval.dataset import Generation
from lab.eval.labels import Label
from lab.eval.verdicts_eval import breakdown, group_stats, loop_onsets, traffic_of


def generation(key: str, kind: str, length: int, label: Label, inducer: str = "none") -> Generation:
    entry = CorpusEntry(
        key, key, "production", "test", "greedy", 0.0, 1.0, [1], list(range(length)), "", "length", kind, inducer
    )
    return Generation(entry, label)


def test_false_alarms_are_per_thousand_healthy_tokens_and_leads_against_the_text_detector():
    gens = [
        generation("a", "code", 900, Label("negative")),
        generation("b", "code", 100, Label("negative")),
        generation("c", "list", 200, Label("visible", onset=50)),
        generation("d", "list", 200, Label("visible", onset=None)),
        generation("e", "list", 200, Label("visible", onset=80)),
    ]
    firing = {"a": 400, "b": None, "c": 40, "d": 120, "e": None}
    stats = group_stats(gens, firing)
    assert (stats["healthy_tokens"], stats["false_alarms"], stats["false_alarms_per_1k_tokens"]) == (1000, 1, 1.0)
    assert (stats["loops"], stats["loops_caught"], stats["recall"]) == (3, 2, 0.6667)
    assert stats["median_lead_over_text_detector"] == 10.0
    assert stats["caught_where_text_detector_never_fires"] == 1


def test_groups_split_traffic_by_kind_and_inducer_and_by_length():
    gens = [
        generation("a", "induced", 100, Label("visible", 20), inducer="frequency_penalty"),
        generation("b", "human_code", 900, Label("negative")),
    ]
    assert traffic_of(gens[0]) == "induced:frequency_penalty"
    out = breakdown(gens, {"a": 30, "b": None})
    assert set(out["traffic"]) == {"induced:frequency_penalty", "human_code"}
    assert set(out["length"]) == {"0-127", "512-1000"}
    assert set(out["length_generated"]) == {"0-127"}
    assert out["all"]["false_alarms_per_1k_tokens"] == 0.0


def test_loop_onsets_list_every_visible_loop_with_both_firing_tokens():
    gens = [
        generation("a", "longform", 600, Label("visible", onset=120)),
        generation("b", "code", 300, Label("negative")),
        generation("c", "list", 200, Label("visible", onset=None)),
    ]
    onsets = loop_onsets(gens, {"a": 340, "b": 10, "c": None})
    assert [(o["key"], o["text_detector"], o["fired"], o["length"]) for o in onsets] == [
        ("a", 120, 340, 600),
        ("c", None, None, 200),
    ]
    assert onsets[0]["traffic"] == "longform"
