"""docs/METRICS_REFERENCE.md documents every declared metric truthfully, and rules and dashboards query
only metrics that exist."""

import pytest

from gateway.gate.policy import Policy
from grafana.generate import DASHBOARDS
from monitors.verdict import UNCALIBRATED, VerdictLevel
from tests.observability.sources import (
    METRICS_REFERENCE,
    alerting_rules,
    declared_metrics,
    exposed_names,
    markdown_table,
    recording_rules,
    referenced_names,
)

REFERENCE = METRICS_REFERENCE.read_text()


def _documented() -> dict[str, dict[str, str]]:
    rows = markdown_table(REFERENCE, "| metric |")
    return {row[0]: {"type": row[1], "unit": row[2], "labels": row[3], "meaning": row[4]} for row in rows}


def _label_values() -> dict[str, str]:
    return {row[0]: row[1] for row in markdown_table(REFERENCE, "| label |")}


def _values(cell: str) -> set[str]:
    return {value.strip().strip("`") for value in cell.split(",")}


def test_every_declared_metric_is_documented():
    assert sorted(set(declared_metrics()) - set(_documented())) == []


def test_every_documented_metric_is_declared():
    assert sorted(set(_documented()) - set(declared_metrics())) == []


@pytest.mark.parametrize("name", sorted(declared_metrics()))
def test_documented_type_and_labels_are_the_declared_ones(name):
    metric, doc = declared_metrics()[name], _documented()[name]
    assert doc["type"] == metric.kind
    labels = {label.strip() for label in doc["labels"].split(",") if label.strip()}
    # Info metrics carry their info keys as labels too; the declared labels must all be there.
    assert set(metric.labels) <= labels if metric.kind == "info" else labels == set(metric.labels)
    assert doc["unit"] and doc["meaning"]


def test_documented_buckets_are_the_declared_ones():
    rows = markdown_table(REFERENCE, "| histogram |")
    documented = {row[0]: tuple(float(b) for b in row[1].split(",")) for row in rows}
    declared = {name: m.buckets for name, m in declared_metrics().items() if m.kind == "histogram"}
    assert documented == declared


def test_verdict_and_policy_label_values_are_the_code_s_closed_sets():
    values = _label_values()
    assert _values(values["verdict"]) == {level.value for level in VerdictLevel} | {UNCALIBRATED}
    assert _values(values["policy"]) == {policy.value for policy in Policy}


def test_every_label_of_a_declared_metric_has_documented_values():
    documented = {label.split(" (")[0] for label in _label_values()}
    used = {label for metric in declared_metrics().values() if metric.kind != "info" for label in metric.labels}
    assert sorted(used - documented) == []


def _known_names() -> set[str]:
    return exposed_names() | {rule["record"] for rule in recording_rules()} | {"up"}


@pytest.mark.parametrize("rule", recording_rules() + alerting_rules(), ids=lambda r: r.get("record", r.get("alert")))
def test_rules_read_only_existing_metrics(rule):
    names = referenced_names(rule["expr"])
    assert names, "an expression that reads no metric"
    assert sorted(names - _known_names()) == []


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda d: d.uid)
def test_dashboards_read_only_existing_metrics(dashboard):
    queries = [q.expr for panel in dashboard.panels() for q in panel.queries] + [v.query for v in dashboard.variables]
    unknown = {name for expr in queries for name in referenced_names(expr)} - _known_names()
    assert sorted(unknown) == []


def test_every_declared_metric_is_shown_on_a_dashboard_or_used_by_a_rule():
    exprs = [q.expr for d in DASHBOARDS for p in d.panels() for q in p.queries] + [
        r["expr"] for r in recording_rules() + alerting_rules()
    ]
    read = {name for expr in exprs for name in referenced_names(expr)}
    unread = [name for name, m in declared_metrics().items() if not m.sample_names() & read]
    assert unread == []
