"""deploy/ is consistent: what the compose file and the Kubernetes manifests reference exists, ports and
names agree across files, settings are real settings, and generated manifests match their sources.

Docker and Kubernetes cannot run here; these checks read the files as the tools would.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml

from deploy import render
from gateway.api.health import router as health_router
from gateway.config import ENV_PREFIX, Settings, load_settings
from gateway.server import LAST_GRACE
from monitors.calibration import load_calibration
from tests.observability.sources import (
    COMPOSE_FILE,
    GRAFANA,
    KUBERNETES,
    PROMETHEUS_CONFIG,
    alerting_rules,
    rule_groups,
)

DEPLOY = COMPOSE_FILE.parent
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES = COMPOSE["services"]
PROMETHEUS = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
# Read by the gateway outside Settings: the config file and the model cache (gateway/engine/provision.py).
EXTRA_GATEWAY_ENV = {"SINKWATCH_CONFIG", "SINKWATCH_CACHE_DIR"}
GATEWAY_JOB = "sinkwatch-gateway"
KUBERNETES_VERSION = "1.32"  # the schemas the manifests are checked against
OPERATOR_API = "monitoring.coreos.com/"  # the Prometheus Operator's kinds: CRDs, no schema in kubernetes-validate


def _default(value: object) -> str:
    """A compose value with ``${VAR:-default}`` resolved to its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def _arguments(command: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def _listening_ports(service: dict) -> set[int]:
    ports = {int(str(p).split(":")[-1]) for p in service.get("ports", [])} | {int(p) for p in service.get("expose", [])}
    if port := service.get("environment", {}).get("SINKWATCH_PORT"):
        ports.add(int(port))
    if port := _arguments(service.get("command", [])).get("port"):
        ports.add(int(port))
    return ports


def _host_path(service: dict, container_path: str) -> Path:
    """The file on this machine that a bind mount shows at ``container_path`` inside the container."""
    target = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        source, mount = volume.split(":")[:2]
        if source.startswith(".") and (target == PurePosixPath(mount) or PurePosixPath(mount) in target.parents):
            return DEPLOY / source / target.relative_to(mount)
    raise AssertionError(f"{container_path} is not inside a bind mount")


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("http://").split("/")[0].partition(":")
    return host, int(port)


def _check_gateway_environment(environment: dict[str, str]) -> Settings:
    """The gateway's settings from its ``SINKWATCH_*`` variables, all of which must be real settings."""
    ours = {name: value for name, value in environment.items() if name.startswith(ENV_PREFIX)}
    names = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | EXTRA_GATEWAY_ENV
    assert sorted(set(ours) - names) == []
    return load_settings(None, environ=ours)


# --- compose ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if "build" in s])
def test_compose_builds_from_dockerfiles_that_exist(name):
    build = SERVICES[name]["build"]
    context = DEPLOY / build["context"]
    assert (context / build["dockerfile"]).is_file()
    for line in (context / build["dockerfile"]).read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (context / source).exists(), f"{build['dockerfile']} copies missing {source}"


@pytest.mark.parametrize("name", SERVICES)
def test_compose_mounts_files_that_exist_and_declared_volumes(name):
    for volume in SERVICES[name].get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (DEPLOY / source).exists(), source
        else:
            assert source in COMPOSE["volumes"]


def test_prometheus_scrapes_and_alerts_compose_services_on_their_ports():
    targets = [t for job in PROMETHEUS["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    targets += [t for am in PROMETHEUS["alerting"]["alertmanagers"] for c in am["static_configs"] for t in c["targets"]]
    for target in targets:
        host, port = _host_port(target)
        service = "prometheus" if host == "localhost" else host
        assert port in _listening_ports(SERVICES[service]) | ({9090} if service == "prometheus" else set()), target


def test_prometheus_loads_its_config_and_the_rules_from_the_mounted_files():
    prometheus = SERVICES["prometheus"]
    config = _host_path(prometheus, _arguments(prometheus["command"])["config.file"])
    assert config.resolve() == PROMETHEUS_CONFIG.resolve()
    rule_files = [path for pattern in PROMETHEUS["rule_files"] for path in config.parent.glob(pattern)]
    assert [p.name for p in rule_files] == ["sinkwatch.rules.yml"]


def test_the_gateway_down_alert_matches_the_gateway_scrape_job():
    assert GATEWAY_JOB in {job["job_name"] for job in PROMETHEUS["scrape_configs"]}
    down = next(rule for rule in alerting_rules() if rule["alert"] == "SinkwatchGatewayDown")
    assert f'job="{GATEWAY_JOB}"' in down["expr"]


def test_alertmanager_loads_the_mounted_config():
    alertmanager = SERVICES["alertmanager"]
    config = _host_path(alertmanager, _arguments(alertmanager["command"])["config.file"])
    assert config.resolve() == (DEPLOY / "alertmanager" / "alertmanager.yml").resolve()


def test_grafana_gets_the_provisioning_the_dashboards_and_a_home_dashboard():
    grafana = SERVICES["grafana"]
    assert _host_path(grafana, "/etc/grafana/provisioning").resolve() == (GRAFANA / "provisioning").resolve()
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "sinkwatch.yml").read_text())
    dashboards = _host_path(grafana, provider["providers"][0]["options"]["path"])
    assert sorted(p.name for p in dashboards.glob("*.json")) == sorted(
        p.name for p in (GRAFANA / "dashboards" / "sinkwatch").glob("*.json")
    )
    home = _host_path(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert json.loads(home.read_text())["uid"] == "sinkwatch-overview"
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    host, port = _host_port(datasources["datasources"][0]["url"])
    assert port in _listening_ports(SERVICES[host])


def test_the_compose_gateway_has_valid_settings_and_reaches_vllm():
    environment = {k: _default(v) for k, v in SERVICES["gateway"]["environment"].items()}
    settings = _check_gateway_environment(environment)
    assert settings.backend == "vllm"
    for upstream in settings.upstreams.split(","):
        host, port = _host_port(upstream.split("=", 1)[1])
        assert port in _listening_ports(SERVICES[host])


def test_the_compose_gateway_receives_vllm_statistics_on_an_address_vllm_can_reach():
    gateway = SERVICES["gateway"]
    settings = _check_gateway_environment({k: _default(v) for k, v in gateway["environment"].items()})
    _, bound = _host_port(settings.vllm_stats_bind.removeprefix("tcp://"))
    host, advertised = _host_port(settings.vllm_stats_address.removeprefix("tcp://"))
    assert SERVICES[host] is gateway and advertised == bound and bound in _listening_ports(gateway)


def test_the_compose_vllm_serves_a_model_with_a_shipped_calibration():
    served = _arguments(SERVICES["vllm"]["command"])["served-model-name"]
    assert load_calibration(served).model == served


# --- Kubernetes ------------------------------------------------------------------------------------


def _manifests() -> list[dict]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((KUBERNETES / name).read_text())]


def _of_kind(kind: str) -> list[dict]:
    return [m for m in _manifests() if m["kind"] == kind]


def _pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def test_kustomization_lists_every_manifest_and_they_exist():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    on_disk = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_generated_manifests_are_up_to_date():
    assert render.main(["--check"]) == 0, "run `make generate`"


def test_the_prometheus_rule_holds_exactly_the_rules_file():
    (rule,) = _of_kind("PrometheusRule")
    assert rule["spec"]["groups"] == rule_groups()


def test_the_dashboard_config_maps_hold_exactly_the_dashboards():
    maps = {name: text for m in _of_kind("ConfigMap") for name, text in m["data"].items()}
    files = {p.name: p.read_text() for p in (GRAFANA / "dashboards" / "sinkwatch").glob("*.json")}
    assert maps == files
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in _of_kind("ConfigMap"))


@pytest.mark.parametrize("deployment", _of_kind("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_deployments_select_their_own_pods(deployment):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("service", _of_kind("Service"), ids=lambda s: s["metadata"]["name"])
def test_services_select_a_deployment_and_target_its_named_ports(service):
    (deployment,) = [
        d
        for d in _of_kind("Deployment")
        if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    container_ports = {p["name"] for c in _pod_spec(deployment)["containers"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports


@pytest.mark.parametrize("monitor", _of_kind("ServiceMonitor"), ids=lambda m: m["metadata"]["name"])
def test_service_monitors_select_a_service_and_scrape_a_port_it_has(monitor):
    (service,) = [
        s
        for s in _of_kind("Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}


def test_the_gateway_service_is_named_as_the_job_the_gateway_down_alert_watches():
    # The Prometheus Operator names the job after the Service.
    assert GATEWAY_JOB in {s["metadata"]["name"] for s in _of_kind("Service")}


def _gateway_container() -> dict:
    (deployment,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == "sinkwatch-gateway"]
    (container,) = _pod_spec(deployment)["containers"]
    return container


def _gateway_environment() -> dict[str, str]:
    return {e["name"]: e["value"] for e in _gateway_container()["env"] if "value" in e}


def test_the_kubernetes_gateway_has_valid_settings_and_reaches_the_vllm_service():
    settings = _check_gateway_environment(_gateway_environment())
    services = {s["metadata"]["name"]: s for s in _of_kind("Service")}
    for upstream in settings.upstreams.split(","):
        host, port = _host_port(upstream.split("=", 1)[1])
        assert port in {p["port"] for p in services[host]["spec"]["ports"]}


def test_each_kubernetes_gateway_pod_advertises_its_own_address_for_vllm_statistics():
    container = _gateway_container()
    pod_ip = next(e for e in container["env"] if e["name"] == "POD_IP")
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    settings = _check_gateway_environment(_gateway_environment())
    _, bound = _host_port(settings.vllm_stats_bind.removeprefix("tcp://"))
    host, advertised = _host_port(settings.vllm_stats_address.removeprefix("tcp://"))
    assert host == "$(POD_IP)" and advertised == bound
    assert bound in {p["containerPort"] for p in container["ports"]}


def test_the_gateway_probes_use_routes_the_gateway_serves():
    container = _gateway_container()
    routes = {route.path for route in health_router.routes}
    assert {container["readinessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"]} <= routes


def test_kustomize_image_overrides_name_images_the_deployments_use():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    used = {c["image"].split(":")[0] for d in _of_kind("Deployment") for c in _pod_spec(d)["containers"]}
    assert {image["name"] for image in kustomization["images"]} == used


def test_the_compose_gateway_is_given_time_to_drain():
    grace = SERVICES["gateway"]["stop_grace_period"]
    settings = _check_gateway_environment({k: _default(v) for k, v in SERVICES["gateway"]["environment"].items()})
    assert int(grace.removesuffix("s")) >= settings.drain_delay + settings.shutdown_timeout + LAST_GRACE


def test_a_kubernetes_gateway_pod_drains_before_it_is_killed():
    settings = _check_gateway_environment(_gateway_environment())
    (deployment,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == "sinkwatch-gateway"]
    grace = _pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert settings.drain_delay >= 5, "the endpoint must be removed before the pod stops accepting"
    assert grace >= settings.drain_delay + settings.shutdown_timeout + LAST_GRACE


def _kustomized() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing: `make test` installs it (apt-get install kubernetes-client)")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=60, check=True
    )
    return list(yaml.safe_load_all(rendered.stdout))


def test_kubectl_kustomize_renders_every_manifest_into_the_namespace_with_the_pinned_images():
    rendered = _kustomized()
    assert sorted(d["kind"] for d in rendered) == sorted(m["kind"] for m in _manifests())
    assert {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"} == {"sinkwatch"}
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    pinned = {f"{image['name']}:{image['newTag']}" for image in kustomization["images"]}
    deployments = [d for d in rendered if d["kind"] == "Deployment"]
    assert {c["image"] for d in deployments for c in _pod_spec(d)["containers"]} == pinned


def test_the_rendered_manifests_match_the_kubernetes_schemas():
    rendered = _kustomized()
    checked = [d for d in rendered if not d["apiVersion"].startswith(OPERATOR_API)]
    assert {d["kind"] for d in checked} >= {"Namespace", "Deployment", "Service", "ConfigMap"}
    for document in checked:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as invalid:
            pytest.fail(f"{document['kind']} {document['metadata']['name']}: {invalid.message}")


def test_the_schema_check_catches_a_wrong_field():
    (deployment,) = [d for d in _kustomized() if d["kind"] == "Deployment" and "gateway" in d["metadata"]["name"]]
    _pod_spec(deployment)["terminationGracePeriodSeconds"] = "50s"  # an integer, in the schema
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
