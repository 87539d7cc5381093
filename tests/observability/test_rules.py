"""The alert rules are valid, unit-tested, documented in the runbook, and calibrated where they can be.

``make rules`` runs the same promtool commands for people without pytest; here they guard the suite.
"""

import shutil
import subprocess

import pytest
import yaml

from tests.observability.sources import (
    ALERTMANAGER_CONFIG,
    PROMETHEUS_CONFIG,
    RULE_TESTS,
    RULES_FILE,
    RUNBOOK,
    alerting_rules,
    markdown_anchors,
)

ALERTS = alerting_rules()
ALERT_NAMES = [rule["alert"] for rule in ALERTS]
# Alerts on shares of generations: their thresholds must scale with the model's calibration.
COLLAPSE_ALERTS = {"SinkwatchSinkRateHigh", "SinkwatchRankExhaustionRateHigh", "SinkwatchBlockRateHigh"}
AGREED_ALERTS = {
    "SinkwatchSinkRateHigh",
    "SinkwatchRankMarginLow",
    "SinkwatchBlockRateHigh",
    "SinkwatchRescueFailureRateHigh",
    "SinkwatchUpstreamDown",
    "SinkwatchGatewayOverheadHigh",
    "SinkwatchNoTraffic",
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: `make rules` installs it (apt-get install prometheus prometheus-alertmanager)")
    return path


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_rules_and_the_prometheus_config():
    for command in (
        (_tool("promtool"), "check", "rules", str(RULES_FILE)),
        (_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)),
    ):
        result = _run(*command)
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass():
    result = _run(_tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_accepts_its_config_and_pages_only_for_critical_alerts():
    amtool = _tool("amtool")
    result = _run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr

    def receiver(*labels: str) -> str:
        routed = _run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels)
        return routed.stdout.strip()

    assert receiver("severity=critical", "alertname=SinkwatchGatewayDown") == "sinkwatch-pager"
    assert receiver("severity=warning", "alertname=SinkwatchSinkRateHigh") == "sinkwatch-tickets"
    assert receiver("severity=info", "alertname=SinkwatchNoTraffic") == "sinkwatch-info"


def test_the_agreed_alerts_exist_and_names_are_unique():
    assert set(ALERT_NAMES) >= AGREED_ALERTS
    assert len(ALERT_NAMES) == len(set(ALERT_NAMES))


LIMITS_SECTION = "limits-an-operator-can-tune"


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_NAMES)
def test_every_alert_has_severity_summary_description_and_a_runbook_section(rule):
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
    assert page == "docs/RUNBOOK.md"
    assert anchor == rule["alert"].lower()
    assert anchor in markdown_anchors(RUNBOOK.read_text())


def test_every_runbook_section_belongs_to_an_alert_but_the_limits():
    """One section per alert, and one listing the limits an operator can tune (issue 19)."""
    anchors = markdown_anchors(RUNBOOK.read_text())
    assert LIMITS_SECTION in anchors
    assert anchors - {LIMITS_SECTION} == {name.lower() for name in ALERT_NAMES}


def _alerts_tested_firing() -> set[str]:
    fired = set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            fired |= {case["alertname"] for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    return fired


def test_every_alert_has_a_unit_test_in_which_it_fires():
    assert sorted(set(ALERT_NAMES) - _alerts_tested_firing()) == []


@pytest.mark.parametrize("rule", [r for r in ALERTS if r["alert"] in COLLAPSE_ALERTS], ids=lambda r: r["alert"])
def test_collapse_alert_thresholds_are_multiples_of_the_calibrated_target(rule):
    assert "model:sinkwatch_calibration_target_false_positive:ratio" in rule["expr"]


@pytest.mark.parametrize(
    ("alert", "series", "share_alert"),
    [
        (
            "SinkwatchSinkRatePer1kTokensHigh",
            (
                "model:sinkwatch_calibration_target_false_alarms:per_1k_tokens",
                "model:sinkwatch_sink_verdicts_per_1k_completion_tokens:rate10m",
            ),
            "SinkwatchSinkRateHigh",
        ),
        (
            "SinkwatchBlockRatePer1kTokensHigh",
            (
                "model:sinkwatch_blocks_allowed_per_1k_completion_tokens:rate10m",
                "model_action:sinkwatch_gate_actions_per_1k_completion_tokens:rate10m",
            ),
            "SinkwatchBlockRateHigh",
        ),
    ],
)
def test_a_per_token_alert_compares_a_rate_per_1k_completion_tokens_and_its_share_twin_stays_silent(
    alert, series, share_alert
):
    """For a calibration that counts its target per 1,000 tokens, the per-token alert reads that unit and the
    per-generation alert beside it is silenced."""
    rule = next(r for r in ALERTS if r["alert"] == alert)
    assert all(name in rule["expr"] for name in series)
    share = next(r for r in ALERTS if r["alert"] == share_alert)
    assert "unless on (model) model:sinkwatch_calibration_target_false_alarms:per_1k_tokens" in share["expr"]
