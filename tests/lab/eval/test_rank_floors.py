"""Choosing and measuring the rank floors: folds keep a prompt's generations together, the choice holds the
target, and the held-out rate is split by traffic type and length with a Wilson interval."""

import pytest

from lab.eval.rank_floors import (
    HealthyGeneration,
    choose,
    cross_validate,
    held_out,
    length_bucket,
    wilson,
)


def _generation(
    prompt: str, low: float, traffic: str = "chat", tokens: int = 100, head_low: float | None = None
) -> HealthyGeneration:
    return HealthyGeneration(
        prompt, traffic, tokens, {4: {"late": low}}, {4: {"late": low if head_low is None else head_low}}
    )


def test_a_prompts_generations_are_held_out_together():
    # Every prompt answers twice; one prompt's answers sit far below the rest. Floors fitted at rate 0 are
    # the training minimum, so the odd prompt's answers fire only if neither is in the training folds.
    generations = [_generation(f"p{i}", 10.0) for i in range(19) for _ in range(2)]
    generations += [_generation("odd", 1.0), _generation("odd", 1.0)]
    (row,) = cross_validate(generations, [4], [0.0])
    assert row["fired"] == 2
    assert row["generations"] == 40


def test_the_choice_is_the_highest_rate_that_holds_the_target_and_the_smaller_persistence_on_a_tie():
    rows = [
        {"persistence": 1, "fit_rate": 0.05, "rate": 0.07},
        {"persistence": 4, "fit_rate": 0.05, "rate": 0.045},
        {"persistence": 2, "fit_rate": 0.04, "rate": 0.045},
        {"persistence": 8, "fit_rate": 0.05, "rate": 0.02},
    ]
    assert choose(rows, 0.05) == rows[2]
    assert choose(rows, 0.01) == rows[3]


def test_wilson_interval_brackets_the_rate_and_is_not_degenerate_at_zero():
    low, high = wilson(0, 20)
    assert low == 0.0 and 0.15 < high < 0.17
    low, high = wilson(5, 100)
    assert low < 0.05 < high
    assert high - low == pytest.approx(0.0907, abs=0.002)


def test_held_out_splits_by_traffic_and_length():
    generations = [
        _generation("a", 1.0, "code", 40),
        _generation("b", 9.0, "code", 200),
        _generation("c", 9.0, "human_docs", 900),
        _generation("d", 1.0, "human_docs", 900),
    ]
    report = held_out(generations, {"late": 5.0}, 4)
    assert report["all"]["fired"] == 2 and report["all"]["generations"] == 4
    assert report["traffic"]["code"]["fired"] == 1
    assert report["traffic"]["human_docs"]["rate"] == 0.5
    assert list(report["length"]) == ["0-63", "128-255", ">=256"]
    assert report["length"]["0-63"]["fired"] == 1
    assert report["length"][">=256"]["generations"] == 2


def test_held_out_counts_alarms_per_1k_tokens_and_long_generations_judged_on_their_head():
    generations = [
        _generation("a", 1.0, "code", 100),
        _generation("b", 9.0, "code", 100),
        _generation("c", 1.0, "human_docs", 800, head_low=9.0),  # dips only after its first 256 tokens
        _generation("d", 1.0, "human_docs", 1000, head_low=2.0),
    ]
    report = held_out(generations, {"late": 5.0}, 4)
    assert report["all"]["tokens"] == 2000 and report["all"]["per_1k_tokens"] == 1.5
    low, high = report["all"]["per_1k_tokens_ci95"]
    assert low < 1.5 < high < 5.0
    assert report["length"]["64-127"]["per_1k_tokens"] == 5.0
    assert report["length"][">=256"]["per_1k_tokens"] == pytest.approx(2000 / 1800)  # 2 alarms in 1,800 tokens
    assert report["long_head"] == {"head_tokens": 256, "generations": 2, "fired": 2, "fired_in_head": 1}


def test_length_buckets():
    assert [length_bucket(n) for n in (1, 63, 64, 127, 128, 255, 256, 4000)] == [
        "0-63",
        "0-63",
        "64-127",
        "64-127",
        "128-255",
        "128-255",
        ">=256",
        ">=256",
    ]
