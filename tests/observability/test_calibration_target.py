"""The calibration's false-alarm target reaches Prometheus in its own unit (gateway/metrics.py)."""

from dataclasses import replace

from prometheus_client import REGISTRY

from gateway.metrics import model_ready
from monitors.calibration import load_calibration

PER_1K = "sinkwatch_calibration_target_false_alarms_per_1k_tokens"
SHARE = "sinkwatch_calibration_target_false_positive_ratio"


def test_a_target_per_1k_tokens_is_exported_per_1k_tokens_and_a_share_target_only_as_a_share():
    shipped = load_calibration("SmolLM2-135M-Instruct")
    model_ready("unit-tokens", "embedded", replace(shipped, target_fpr=0.05, target_unit="per_1k_tokens"))
    model_ready("unit-share", "embedded", replace(shipped, target_fpr=0.1, target_unit="generations"))
    assert REGISTRY.get_sample_value(PER_1K, {"model": "unit-tokens"}) == 0.05
    assert REGISTRY.get_sample_value(PER_1K, {"model": "unit-share"}) is None
    assert REGISTRY.get_sample_value(SHARE, {"model": "unit-share"}) == 0.1
