"""``sinkwatch bench vllm`` splits its rounds over two start orders and pools them into one figure."""

import pytest

from lab.bench.vllm_bench import session_rounds, summarize


@pytest.mark.parametrize(("rounds", "split"), [(10, [5, 5]), (5, [3, 2]), (1, [1, 0])])
def test_rounds_are_split_over_both_start_orders(rounds, split):
    assert session_rounds(rounds) == split


def test_the_summary_pools_both_sessions_and_pairs_each_round():
    first = {"off": [100.0, 80.0], "on": [90.0, 80.0], "on_untagged": [100.0, 88.0]}
    second = {"off": [120.0], "on": [132.0], "on_untagged": [120.0]}
    row = summarize(16, [first, second])
    assert (row["off"], row["on"], row["on_untagged"]) == (100.0, 90.0, 100.0)
    assert row["loss_on"] == pytest.approx(0.10)
    assert row["loss_on_untagged"] == pytest.approx(0.0)
    # per-round on/off ratios 0.9, 1.0, 1.1: median 1.0, whatever the medians of the columns say
    assert row["round_loss_on"] == pytest.approx(0.0)
    # per-round on/unmonitored ratios 0.9, 0.909, 1.1
    assert row["round_cost_same_server"] == pytest.approx(1 - 80 / 88)
    assert row["sessions"] == [first, second]
