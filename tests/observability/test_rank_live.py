"""Rank exhaustion end to end with the real model: a gateway whose calibration overlay puts every band's
floor above any novel PR the model reaches forces the verdict on every long enough generation; a real
Prometheus then fires the rank-exhaustion and rank-margin alerts and the dashboards' rank panels return data.

No stressor found by ``sinkwatch eval rank`` drives SmolLM2-135M-Instruct below its fitted floors
(docs/EVALUATION.md, "Rank exhaustion"), so the forced case is forced through calibration: what it checks
is that the verdict is reachable from the served features through the detector, the metrics, the rules
and the panels.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from gateway.config import Settings
from grafana.generate import DASHBOARDS
from monitors.calibration import load_calibration, rank_overlay_path
from monitors.rank_exhaustion import rank_overlay
from tests.conftest import MODEL, RunningServer, free_port, start_gateway
from tests.observability.prometheus import PrometheusServer
from tests.observability.test_live_stack import _shortened_rules, _substituted, _variable_values, _wait_for_firing

pytestmark = pytest.mark.model

FORCED_FLOOR = 1000.0  # far above any PR of a 32-token window (at most 31)
PROMPTS = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a busy market in the morning.",
    "Tell me about the history of tea.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain why the sky changes colour at sunset.",
)
REQUESTS = 12  # the rate alerts need at least 10 events in their window


@dataclass
class RankStack:
    prometheus: PrometheusServer
    verdicts: list[str]


def _forced_calibration(folder: Path) -> Path:
    """The shipped calibration with its own overlay, every floor raised to :data:`FORCED_FLOOR`."""
    shipped = load_calibration(MODEL)
    path = folder / "forced.json"
    path.write_text(shipped.to_json())
    floors = dict.fromkeys(shipped.rank_floors, FORCED_FLOOR)
    overlay = rank_overlay(shipped.recurrence_levels, floors, persistence=4, notes={"forced": True})
    rank_overlay_path(path).write_text(json.dumps(overlay))
    return path


@pytest.fixture(scope="module")
def rank_stack(tmp_path_factory) -> Iterator[RankStack]:
    workdir = tmp_path_factory.mktemp("rank")
    rules = workdir / "sinkwatch.rules.yml"
    rules.write_text(_shortened_rules())
    settings = Settings().replace(port=free_port(), max_batch=8, calibration=str(_forced_calibration(workdir)))
    server: RunningServer
    with start_gateway(settings) as server:
        server.wait_ready()
        with PrometheusServer(workdir, {"sinkwatch-gateway": [server.base_url.removeprefix("http://")]}, [rules]) as p:
            p.wait_for(lambda: len(p.query('up{job="sinkwatch-gateway"} == 1')) == 1, 60, "gateway up")
            client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=600)
            verdicts = []
            for i in range(REQUESTS):
                response = client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    max_tokens=48,
                    temperature=0.7,
                    seed=i,
                )
                verdicts.append(response.model_extra["stability"]["verdict"])
            p.wait_for_scrapes("sinkwatch-gateway", count=2, timeout=30)
            yield RankStack(p, verdicts)


def test_a_forced_floor_gives_rank_exhaustion_on_long_generations(rank_stack):
    assert rank_stack.verdicts.count("rank_exhaustion") >= 10, rank_stack.verdicts


def test_the_rank_alerts_fire_on_the_forced_case(rank_stack):
    _wait_for_firing(rank_stack.prometheus, "SinkwatchRankExhaustionRateHigh", model=MODEL, verdict="rank_exhaustion")
    for band in ("early", "middle", "late"):
        _wait_for_firing(rank_stack.prometheus, "SinkwatchRankMarginLow", model=MODEL, band=band)


def test_the_rank_panels_show_the_forced_case(rank_stack):
    checked = 0
    for dashboard in DASHBOARDS:
        values = _variable_values(rank_stack.prometheus, dashboard)
        for panel in dashboard.panels():
            for query in panel.queries:
                if "rank_margin" in query.expr or "rank_exhaustion" in query.expr:
                    expr = _substituted(query.expr, values)
                    assert rank_stack.prometheus.query(expr), f"{panel.title}: {expr}"
                    checked += 1
    assert checked, "no dashboard panel reads the rank margin or the rank-exhaustion verdict"
