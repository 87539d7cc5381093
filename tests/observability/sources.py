"""What the observability tests read: the declared metrics, the rules file, the dashboards, the docs."""

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from prometheus_client.metrics import MetricWrapperBase

from gateway import metrics
from gateway.workers.exposition import GATHERED_SERIES

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "deploy" / "prometheus" / "rules" / "sinkwatch.rules.yml"
RULE_TESTS = sorted((REPO / "deploy" / "prometheus" / "tests").glob("*.test.yml"))
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
KUBERNETES = REPO / "deploy" / "kubernetes"
GRAFANA = REPO / "grafana"
METRICS_REFERENCE = REPO / "docs" / "METRICS_REFERENCE.md"
RUNBOOK = REPO / "docs" / "RUNBOOK.md"

# A metric or recording-rule name in PromQL: recording rules have colons; label names and values never
# follow this shape because they sit inside braces and quotes, which are removed first.
_NAME = re.compile(r"\b[a-zA-Z_][a-zA-Z0-9_]*(?::[a-zA-Z0-9_]+)+\b|\bsinkwatch_[a-z0-9_]+\b")
_STRINGS_AND_MATCHERS = re.compile(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]')


@dataclass(frozen=True)
class DeclaredMetric:
    """A metric of :mod:`gateway.metrics` as Prometheus exposes it."""

    name: str
    kind: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    @property
    def documented_name(self) -> str:
        """The name people query: counters with ``_total``, info metrics with ``_info``."""
        return self.name + {"counter": "_total", "info": "_info"}.get(self.kind, "")

    def sample_names(self) -> set[str]:
        """Every series name this metric exposes."""
        if self.kind == "histogram":
            return {f"{self.name}_bucket", f"{self.name}_count", f"{self.name}_sum"}
        return {self.documented_name}


def declared_metrics() -> dict[str, DeclaredMetric]:
    """Every metric declared in :mod:`gateway.metrics`, by documented name."""
    found = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            buckets = tuple(b for b in getattr(value, "_upper_bounds", ()) if b != float("inf"))
            metric = DeclaredMetric(value._name, value._type, tuple(value._labelnames), buckets)
            found[metric.documented_name] = metric
    return found


def exposed_names() -> set[str]:
    """Every series name the gateway can expose: its declared metrics', and those the gathering of
    ``--workers`` metrics adds."""
    declared = {name for metric in declared_metrics().values() for name in metric.sample_names()}
    return declared | GATHERED_SERIES


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES_FILE.read_text())["groups"]


def alerting_rules() -> list[dict]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recording_rules() -> list[dict]:
    return [rule for group in rule_groups() for rule in group["rules"] if "record" in rule]


def referenced_names(expr: str) -> set[str]:
    """Metric and recording-rule names a PromQL expression reads."""
    bare = _STRINGS_AND_MATCHERS.sub(" ", expr)
    return set(_NAME.findall(bare)) | ({"up"} if re.search(r"\bup\b", bare) else set())


def markdown_table(text: str, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header line starts with ``header``, cells stripped of backticks."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
    return rows


def markdown_anchors(text: str) -> set[str]:
    """GitHub anchors of the ``##`` headings of a markdown text."""
    return {
        re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in text.splitlines()
        if line.startswith("## ")
    }
