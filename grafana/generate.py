"""Grafana dashboards as code: ``python -m grafana.generate`` writes ``grafana/dashboards/sinkwatch/*.json``.

Three dashboards: overview (traffic, errors, latency, TTFT, gateway overhead, upstreams), stability
(verdicts, gate actions, rescues, per-band participation ratio and rank margin) and a per-model drill-down.
Panels are laid out in rows on Grafana's 24-column grid. Each panel says which backend's traffic it
needs (``requires``), so that the live test knows which panels must return data from the stack it runs.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from deploy.generated import sync_generated

OUTPUT_DIR = Path(__file__).parent / "dashboards" / "sinkwatch"
SCHEMA_VERSION = 39
GRID_WIDTH = 24
PANEL_HEIGHT = 8
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# The alert rules' collapse-share threshold: COLLAPSE_MULTIPLE x the calibrated target false-positive rate.
COLLAPSE_MULTIPLE = 3


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and its legend."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A panel: ``kind`` is timeseries, stat or heatmap.

    ``requires`` names what a stack needs for the panel to have data: ``proxy`` (a gateway with an upstream
    pool: openai or vllm backend), ``auth`` (API keys or rate limits configured), ``vllm`` (vLLM's plugin) or
    ``refusals`` (clients refused at the HTTP edge).
    """

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    stacked: bool = False
    requires: str | None = None


@dataclass(frozen=True)
class Row:
    """A titled row of panels, laid out left to right with equal widths."""

    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    """A query variable fed by ``label_values(selector, label)``."""

    name: str
    label: str
    selector: str
    multi: bool = True

    @property
    def query(self) -> str:
        return f"label_values({self.selector}, {self.name})"


@dataclass(frozen=True)
class Dashboard:
    """A dashboard: its uid is also its file name."""

    uid: str
    title: str
    description: str
    variables: tuple[Variable, ...]
    rows: tuple[Row, ...]

    def panels(self) -> list[Panel]:
        """Every panel, in layout order."""
        return [panel for row in self.rows for panel in row.panels]

    def to_json(self) -> dict:
        """The dashboard model Grafana's file provider loads."""
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["sinkwatch"],
            "editable": False,
            "graphTooltip": 1,
            "refresh": "30s",
            "schemaVersion": SCHEMA_VERSION,
            "time": {"from": "now-1h", "to": "now"},
            "timezone": "browser",
            "version": 1,
            "links": [{"type": "dashboards", "tags": ["sinkwatch"], "title": "sinkwatch", "asDropdown": True}],
            "annotations": {"list": [_builtin_annotation()]},
            "templating": {"list": [_datasource_variable()] + [_query_variable(v) for v in self.variables]},
            "panels": _layout(self.rows),
        }


M = 'model=~"$model"'
MB = 'model=~"$model",band=~"$band"'
RATE = "[$__rate_interval]"
# The bucket bound 0 as exporters write it: "0.0" (prometheus_client) or "0" (normalised by Prometheus 3).
ZERO = "0|0.0"


def _quantile(q: float, metric: str, by: str = "", selector: str = M) -> str:
    grouping = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({grouping}) (rate({metric}_bucket{{{selector}}}{RATE})))"


def _quantiles(metric: str, by: str, selector: str = M, quantiles: tuple[float, ...] = (0.5, 0.95, 0.99)) -> tuple:
    return tuple(Query(_quantile(q, metric, by, selector), f"p{round(q * 100)} {{{{{by}}}}}") for q in quantiles)


TRAFFIC = Row(
    "Traffic",
    (
        Panel(
            "Requests by outcome",
            "Finished requests per second: ok, client_error (4xx), server_error (5xx), cancelled (client gone).",
            (Query(f"sum by (outcome) (rate(sinkwatch_requests_total{{{M}}}{RATE}))", "{{outcome}}"),),
            unit="reqps",
            stacked=True,
        ),
        Panel(
            "Errors by type",
            "Error responses per second by OpenAI error type, all models.",
            (Query(f"sum by (endpoint, type) (rate(sinkwatch_errors_total{RATE}))", "{{endpoint}} {{type}}"),),
            unit="reqps",
            stacked=True,
        ),
        Panel(
            "Tokens",
            "Tokens per second: input (prompt) and output (generated, including tokens the gate withheld).",
            (Query(f"sum by (type) (rate(sinkwatch_tokens_total{{{M}}}{RATE}))", "{{type}}"),),
            unit="short",
        ),
        Panel(
            "Concurrency",
            "Requests being served, the embedded engine's batch and queue, and the event loop's tasks (a steady "
            "climb with flat traffic is a leak).",
            (
                Query(f"sum(sinkwatch_requests_in_flight{{{M}}})", "in flight"),
                Query("sum(sinkwatch_engine_active_requests)", "engine batch"),
                Query("sum(sinkwatch_engine_waiting_requests)", "engine queue"),
                Query("max by (instance) (sinkwatch_event_loop_tasks)", "event loop tasks {{instance}}"),
            ),
        ),
    ),
)

LATENCY = Row(
    "Latency",
    (
        Panel(
            "Request duration",
            "Time from request received to the last byte (OpenTelemetry gen_ai.server.request.duration).",
            _quantiles("sinkwatch_request_duration_seconds", "endpoint"),
            unit="s",
        ),
        Panel(
            "Time to first token",
            "Time to the first completion text released to the client, hold-back buffer included.",
            _quantiles("sinkwatch_time_to_first_token_seconds", "endpoint"),
            unit="s",
        ),
        Panel(
            "Completion length",
            "Completion tokens per request.",
            _quantiles("sinkwatch_completion_tokens", "model", quantiles=(0.5, 0.95)),
        ),
        Panel(
            "Gateway overhead",
            "Time spent in the gateway itself, excluding the upstream; alert at p99 above 20 ms.",
            _quantiles("sinkwatch_gateway_overhead_seconds", "backend", selector="", quantiles=(0.5, 0.99)),
            unit="s",
            requires="proxy",
        ),
    ),
)

PROXY = Row(
    "Proxy: upstreams and access",
    (
        Panel(
            "Upstream health",
            "1 while an upstream passes its health checks (worst gateway shown).",
            (Query("min by (upstream) (sinkwatch_upstream_up)", "{{upstream}}"),),
            unit="none",
            requires="proxy",
        ),
        Panel(
            "Upstream requests",
            "Requests sent to each upstream per second, by outcome.",
            (
                Query(
                    f"sum by (upstream, outcome) (rate(sinkwatch_upstream_requests_total{RATE}))",
                    "{{upstream}} {{outcome}}",
                ),
            ),
            unit="reqps",
            requires="proxy",
        ),
        Panel(
            "Upstream errors",
            "Upstream faults per second: connect, timeout, reset, malformed, status.",
            (Query(f"sum by (upstream, kind) (rate(sinkwatch_upstream_errors_total{RATE}))", "{{upstream}} {{kind}}"),),
            unit="reqps",
            stacked=True,
            requires="proxy",
        ),
        Panel(
            "Upstream in flight",
            "Requests outstanding at each upstream (the balancer picks the least loaded).",
            (Query("sum by (upstream) (sinkwatch_upstream_in_flight)", "{{upstream}}"),),
            requires="proxy",
        ),
        Panel(
            "Authentication failures",
            "Requests rejected with 401, by reason (missing or invalid API key).",
            (Query(f"sum by (reason) (rate(sinkwatch_auth_failures_total{RATE}))", "{{reason}}"),),
            unit="reqps",
            requires="auth",
        ),
        Panel(
            "Rate-limited requests",
            "Requests refused with 429 by the per-key rate limit.",
            (Query(f"sum by (limit) (rate(sinkwatch_rate_limited_total{RATE}))", "{{limit}}"),),
            unit="reqps",
            requires="auth",
        ),
        Panel(
            "HTTP edge refusals",
            "Client connections and requests refused at the HTTP edge, by reason: oversized heads, slow heads or "
            "bodies, connections over the limit, unparsable requests, upgrades (docs/RUNBOOK.md).",
            (Query(f"sum by (reason) (rate(sinkwatch_http_refused_total{RATE}))", "{{reason}}"),),
            unit="reqps",
            requires="refusals",
        ),
    ),
)

VERDICTS = Row(
    "Verdicts and gate",
    (
        Panel(
            "Verdicts",
            "Final stability verdict per monitored request.",
            (Query(f"sum by (verdict) (rate(sinkwatch_verdicts_total{{{M}}}{RATE}))", "{{verdict}}"),),
            unit="reqps",
            stacked=True,
        ),
        Panel(
            "Collapse share vs alert threshold",
            f"Share of generations ending in sink or rank exhaustion over 10 minutes, against {COLLAPSE_MULTIPLE}x "
            "the calibrated target false-positive rate (the alert threshold).",
            (
                Query(
                    f'model_verdict:sinkwatch_verdicts:ratio_rate10m{{{M},verdict=~"sink|rank_exhaustion"}}',
                    "{{model}} {{verdict}}",
                ),
                Query(
                    f"{COLLAPSE_MULTIPLE} * model:sinkwatch_calibration_target_false_positive:ratio{{{M}}}",
                    "{{model}} alert threshold",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Stability risk",
            "Per monitored request, its highest calibrated probability of sinking (stability.risk): median and "
            "p90, and the share at 0.8 or more (the risk alert fires above 20%).",
            (
                Query(_quantile(0.5, "sinkwatch_stability_risk"), "p50"),
                Query(_quantile(0.9, "sinkwatch_stability_risk"), "p90"),
                Query(f"model:sinkwatch_stability_risk_high:ratio_rate10m{{{M}}}", "{{model}} share at 0.8+"),
            ),
            unit="percentunit",
        ),
        Panel(
            "Prefill risk",
            "Per monitored request, the probability computed before its first token, from the prompt and the "
            "request's sampling, that the answer loops (stability.prefill_risk): median and p90.",
            (
                Query(_quantile(0.5, "sinkwatch_prefill_risk"), "p50"),
                Query(_quantile(0.9, "sinkwatch_prefill_risk"), "p90"),
            ),
            unit="percentunit",
        ),
        Panel(
            "Gate actions",
            "What the gate did per request (pass, annotate, block, rescue) and the verdict behind it.",
            (
                Query(
                    f"sum by (action, reason) (rate(sinkwatch_gate_actions_total{{{M}}}{RATE}))",
                    "{{action}} ({{reason}})",
                ),
            ),
            unit="reqps",
            stacked=True,
        ),
        Panel(
            "Blocks per 1,000 completion tokens",
            "For a calibration that counts its sink target per 1,000 tokens: blocks per 1,000 completion tokens "
            f"over 10 minutes, against {COLLAPSE_MULTIPLE}x what the calibration allows both collapse modes in that "
            "unit (the alert threshold).",
            (
                Query(
                    f'model_action:sinkwatch_gate_actions_per_1k_completion_tokens:rate10m{{{M},action="block"}}',
                    "{{model}} blocks",
                ),
                Query(
                    f"{COLLAPSE_MULTIPLE} * model:sinkwatch_blocks_allowed_per_1k_completion_tokens:rate10m{{{M}}}",
                    "{{model}} alert threshold",
                ),
            ),
        ),
        Panel(
            "Rescues",
            "Rescued requests by final outcome, and individual resampling attempts.",
            (
                Query(f"sum by (outcome) (rate(sinkwatch_rescues_total{{{M}}}{RATE}))", "requests {{outcome}}"),
                Query(f"sum by (outcome) (rate(sinkwatch_rescue_attempts_total{{{M}}}{RATE}))", "attempts {{outcome}}"),
            ),
            unit="reqps",
        ),
        Panel(
            "Tokens withheld and discarded",
            "Generated tokens the client never saw: withheld by blocks, discarded and regenerated by rescues.",
            (
                Query(f"sum(rate(sinkwatch_tokens_withheld_total{{{M}}}{RATE}))", "withheld"),
                Query(f"sum(rate(sinkwatch_tokens_discarded_total{{{M}}}{RATE}))", "discarded"),
            ),
        ),
        Panel(
            "vLLM statistics delivery",
            "Per-token hidden-state statistics from the vLLM plugin per second: received in time, late, missing.",
            (Query(f"sum by (outcome) (rate(sinkwatch_vllm_stats_total{RATE}))", "{{outcome}}"),),
            unit="short",
            stacked=True,
            requires="vllm",
        ),
        Panel(
            "Unmonitored requests",
            "Requests relayed without monitoring (marked stability.verdict unmonitored), by reason: capacity "
            "(the reader is full), endpoint (no monitored path), uncalibrated (nothing captures: --no-capture, or "
            "no reader).",
            (Query(f"sum by (reason) (rate(sinkwatch_unmonitored_requests_total{RATE}))", "{{reason}}"),),
            unit="reqps",
            stacked=True,
        ),
        Panel(
            "Shadow recording",
            "Generations under observe written to the traffic recording (--record-dir) per second, and those it "
            "dropped, by reason (queue_full, write_error); the requests themselves are never affected.",
            (
                Query(f"sum(rate(sinkwatch_recorded_generations_total{{{M}}}{RATE}))", "recorded"),
                Query(f"sum by (reason) (rate(sinkwatch_recording_failures_total{RATE}))", "dropped: {{reason}}"),
            ),
            unit="short",
        ),
    ),
)

BANDS = Row(
    "Layer bands",
    (
        Panel(
            "Participation ratio (median)",
            "Median over requests of the mean row-normalised participation ratio, per layer band.",
            (Query(_quantile(0.5, "sinkwatch_participation_ratio", "band", MB), "{{band}}"),),
        ),
        Panel(
            "Participation ratio distribution",
            "Requests per participation-ratio bucket, all selected bands.",
            (Query(f"sum by (le) (rate(sinkwatch_participation_ratio_bucket{{{MB}}}{RATE}))", "{{le}}"),),
            kind="heatmap",
        ),
        Panel(
            "Rank margin (p10 and median)",
            "Lowest margin of a request above the calibrated rank floor; below 0 the band dipped under its floor. "
            "The rank-margin alert fires when the 15-minute median stays below 0.",
            (
                Query(_quantile(0.1, "sinkwatch_rank_margin", "band", MB), "p10 {{band}}"),
                Query(_quantile(0.5, "sinkwatch_rank_margin", "band", MB), "p50 {{band}}"),
            ),
        ),
        Panel(
            "Requests below the rank floor",
            "Share of requests whose lowest margin fell below the calibrated floor, per band.",
            (
                Query(
                    f'sum by (band) (rate(sinkwatch_rank_margin_bucket{{{MB},le=~"{ZERO}"}}{RATE}))'
                    f" / sum by (band) (rate(sinkwatch_rank_margin_count{{{MB}}}{RATE}))",
                    "{{band}}",
                ),
            ),
            unit="percentunit",
        ),
    ),
)

HEADLINES = Row(
    "At a glance",
    (
        Panel(
            "Requests",
            "Finished requests per second, all endpoints.",
            (Query(f"sum(rate(sinkwatch_requests_total{{{M}}}{RATE}))"),),
            unit="reqps",
            kind="stat",
        ),
        Panel(
            "Server errors",
            "Share of requests that failed with 5xx (0 when none did).",
            (
                Query(
                    f'(sum(rate(sinkwatch_requests_total{{{M},outcome="server_error"}}{RATE})) or vector(0))'
                    f" / sum(rate(sinkwatch_requests_total{{{M}}}{RATE}))"
                ),
            ),
            unit="percentunit",
            kind="stat",
        ),
        Panel(
            "TTFT p95",
            "95th percentile time to first token.",
            (Query(_quantile(0.95, "sinkwatch_time_to_first_token_seconds")),),
            unit="s",
            kind="stat",
        ),
        Panel(
            "Collapse share",
            "Share of monitored requests whose verdict was sink or rank exhaustion.",
            (
                Query(
                    f'sum(rate(sinkwatch_verdicts_total{{{M},verdict=~"sink|rank_exhaustion"}}{RATE}))'
                    f" / sum(rate(sinkwatch_verdicts_total{{{M}}}{RATE}))"
                ),
            ),
            unit="percentunit",
            kind="stat",
        ),
    ),
)

MODEL_STATE = Row(
    "Model",
    (
        Panel(
            "Ready",
            "1 once the backend can serve the model.",
            (Query(f"max by (backend) (sinkwatch_model_ready{{{M}}})", "{{backend}}"),),
            unit="none",
            kind="stat",
        ),
        Panel(
            "Calibrated",
            "1 when the model's verdicts come from its own calibration; 0 when it is served uncalibrated (monitored, "
            "verdict uncalibrated, block and rescue do not act): run sinkwatch calibrate for it.",
            (Query(f"min(sinkwatch_model_calibrated{{{M}}})"),),
            unit="none",
            kind="stat",
        ),
        Panel(
            "Calibrated target false-positive rate",
            "Share of normal generations the calibration lets fire a verdict; alert thresholds scale with it.",
            (Query(f"max(sinkwatch_calibration_target_false_positive_ratio{{{M}}})"),),
            unit="percentunit",
            kind="stat",
        ),
        Panel(
            "Calibration",
            "Creation date, number of normal generations and file sha256 of the live calibration (SIGHUP reloads it).",
            (
                Query(
                    f"max by (created, generations, sha256) (sinkwatch_calibration_info{{{M}}})",
                    "{{created}} n={{generations}} sha256 {{sha256}}",
                ),
            ),
            unit="none",
            kind="stat",
        ),
        Panel(
            "Gateway version",
            "Version and backend of each gateway serving this model.",
            (  # one series per gateway: its worker processes (``worker`` label) count once
                Query(
                    "count by (version, backend) (max by (job, instance, version, backend) (sinkwatch_build_info))",
                    "{{version}} {{backend}}",
                ),
            ),
            unit="none",
            kind="stat",
        ),
    ),
)

MODEL = Variable("model", "Model", "sinkwatch_model_ready")
BAND = Variable("band", "Band", 'sinkwatch_participation_ratio_count{model=~"$model"}')

DASHBOARDS = (
    Dashboard(
        "sinkwatch-overview",
        "sinkwatch / Overview",
        "Traffic, errors, latency, time to first token, gateway overhead and upstream health.",
        (MODEL,),
        (HEADLINES, TRAFFIC, LATENCY, PROXY),
    ),
    Dashboard(
        "sinkwatch-stability",
        "sinkwatch / Stability",
        "Verdicts, gate actions, rescues, and the participation ratio and rank margin of every layer band.",
        (MODEL, BAND),
        (VERDICTS, BANDS),
    ),
    Dashboard(
        "sinkwatch-model",
        "sinkwatch / Model drill-down",
        "One model: its calibration, traffic, latency, verdicts and layer bands.",
        (Variable("model", "Model", "sinkwatch_model_ready", multi=False), BAND),
        (MODEL_STATE, TRAFFIC, LATENCY, VERDICTS, BANDS),
    ),
)


def _layout(rows: tuple[Row, ...]) -> list[dict]:
    panels: list[dict] = []
    y = 0
    for row in rows:
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        width = GRID_WIDTH // _columns(len(row.panels))
        for index, panel in enumerate(row.panels):
            x = (index * width) % GRID_WIDTH
            if index and x == 0:
                y += PANEL_HEIGHT
            grid = {"h": PANEL_HEIGHT, "w": width, "x": x, "y": y}
            panels.append(_panel_json(panel, len(panels) + 1, grid))
        y += PANEL_HEIGHT
    return panels


def _columns(count: int) -> int:
    """Panels per line: up to 4, or 3 when that fills every line."""
    return count if count <= 4 else 3 if count % 3 == 0 else 4


def _panel_json(panel: Panel, panel_id: int, grid: dict) -> dict:
    targets = [
        {
            "refId": chr(ord("A") + i),
            "datasource": DATASOURCE,
            "expr": query.expr,
            "legendFormat": query.legend or "__auto",
            "range": panel.kind != "stat",
            "instant": panel.kind == "stat",
            **({"format": "heatmap"} if panel.kind == "heatmap" else {}),
        }
        for i, query in enumerate(panel.queries)
    ]
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "targets": targets,
        "fieldConfig": {"defaults": _field_defaults(panel), "overrides": []},
        "options": _options(panel),
    }


def _field_defaults(panel: Panel) -> dict:
    defaults: dict = {"unit": panel.unit}
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stacked else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"},
        }
    return defaults


def _options(panel: Panel) -> dict:
    if panel.kind == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "textMode": "auto",
            "orientation": "auto",
        }
    if panel.kind == "heatmap":
        return {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "yAxis": {"axisPlacement": "left"},
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
        }
    return {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def _builtin_annotation() -> dict:
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


def _datasource_variable() -> dict:
    return {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def _query_variable(variable: Variable) -> dict:
    return {
        "name": variable.name,
        "label": variable.label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": variable.query,
        "query": {"query": variable.query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {},
        "hide": 0,
        "includeAll": variable.multi,
        "allValue": ".*" if variable.multi else None,
        "multi": variable.multi,
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
    }


def render(dashboard: Dashboard) -> str:
    """The JSON text written for ``dashboard``."""
    return json.dumps(dashboard.to_json(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    """Write every dashboard; with ``--check``, only report files that differ from what would be written."""
    outputs = {OUTPUT_DIR / f"{dashboard.uid}.json": render(dashboard) for dashboard in DASHBOARDS}
    return sync_generated(outputs, check="--check" in argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
