"""The Grafana dashboards are generated from grafana/generate.py and are structurally valid dashboards.

No Grafana server runs here: the checks follow Grafana's dashboard JSON model (schemaVersion 39);
tests/observability/test_live_stack.py runs every query against a real Prometheus.
"""

import json
import re

import pytest
import yaml

from grafana import generate
from tests.observability.sources import GRAFANA

FILES = sorted((GRAFANA / "dashboards" / "sinkwatch").glob("*.json"))
MODELS = {path.stem: json.loads(path.read_text()) for path in FILES}
PANEL_TYPES = {"row", "timeseries", "stat", "heatmap"}
UNITS = {"short", "none", "s", "reqps", "percentunit"}
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}


def _content_panels(model: dict) -> list[dict]:
    return [panel for panel in model["panels"] if panel["type"] != "row"]


def test_checked_in_dashboards_are_what_the_generator_writes():
    assert generate.main(["--check"]) == 0, "run `make generate`"
    assert set(MODELS) == {dashboard.uid for dashboard in generate.DASHBOARDS}


@pytest.mark.parametrize("name", MODELS)
def test_dashboard_has_the_fields_grafana_needs(name):
    model = MODELS[name]
    assert model["uid"] == name and len(name) <= 40
    assert model["title"] and model["schemaVersion"] == generate.SCHEMA_VERSION
    assert {"from", "to"} <= set(model["time"])
    assert isinstance(model["templating"]["list"], list) and isinstance(model["annotations"]["list"], list)


def test_uids_and_titles_are_unique_across_dashboards():
    assert len({m["uid"] for m in MODELS.values()}) == len({m["title"] for m in MODELS.values()}) == len(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_panel_ids_are_unique_and_types_and_units_known(name):
    panels = MODELS[name]["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["type"] in PANEL_TYPES
        if panel["type"] != "row":
            assert panel["title"] and panel["description"]
            assert panel["fieldConfig"]["defaults"]["unit"] in UNITS


@pytest.mark.parametrize("name", MODELS)
def test_panels_fit_the_grid_without_overlapping(name):
    taken: set[tuple[int, int]] = set()
    for panel in MODELS[name]["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= generate.GRID_WIDTH
        columns, lines = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        cells = {(x, y) for x in columns for y in lines}
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells


@pytest.mark.parametrize("name", MODELS)
def test_every_query_uses_the_datasource_variable_and_has_a_unique_ref_id(name):
    for panel in _content_panels(MODELS[name]):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip()


@pytest.mark.parametrize("name", MODELS)
def test_variables_used_are_defined_and_variables_defined_are_used(name):
    model = MODELS[name]
    variables = model["templating"]["list"]
    defined = {variable["name"] for variable in variables}
    texts = [target["expr"] for panel in _content_panels(model) for target in panel["targets"]]
    texts += [json.dumps(panel["datasource"]) for panel in _content_panels(model)]
    texts += [v["definition"] for v in variables if v["type"] == "query"]
    used = {a or b for text in texts for a, b in VARIABLE.findall(text)} - GRAFANA_BUILTINS
    assert used == defined
    for variable in variables:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"
            assert variable["query"]["query"] == variable["definition"].strip()


def test_the_drill_down_dashboard_selects_one_model():
    model = next(v for v in MODELS["sinkwatch-model"]["templating"]["list"] if v["name"] == "model")
    assert model["multi"] is False and model["includeAll"] is False


def test_provisioning_points_grafana_at_the_dashboards_and_a_prometheus_datasource():
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "sinkwatch.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"].endswith("/sinkwatch")
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (prometheus,) = datasource["datasources"]
    assert prometheus["type"] == "prometheus" and prometheus["isDefault"] is True
    assert prometheus["url"].startswith("http://")
