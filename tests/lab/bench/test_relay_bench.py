"""The relay benchmark's arithmetic: what the gateway adds to vLLM's own latency and throughput."""

import pytest

from lab.bench.relay_bench import summarize


def _sample(ttft: float, gap: float, rate: float) -> dict:
    return {"ttft": [ttft, ttft], "gaps": [gap] * 99 + [10 * gap], "tokens_per_s": rate}


def test_the_gateways_additions_are_the_differences_of_the_medians_and_percentiles():
    samples = {
        "direct": [_sample(0.100, 0.010, 100.0), _sample(0.100, 0.010, 100.0)],
        "gateway": [_sample(0.102, 0.0105, 97.0), _sample(0.102, 0.0105, 99.0)],
    }
    row = summarize(16, samples)
    assert row["added_ttft_ms"] == pytest.approx(2.0)
    assert row["added_gap_p50_ms"] == pytest.approx(0.5)
    assert row["added_gap_p99_ms"] == pytest.approx(5.0)
    assert row["tokens_per_s_loss"] == pytest.approx(0.02)
    assert row["round_tokens_per_s_loss"] == pytest.approx(0.02)
