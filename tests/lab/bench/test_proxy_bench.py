"""``sinkwatch bench proxy`` end to end, briefly: the fake upstreams, the gateway and nginx as the reference."""

import argparse
import json
import os

import pytest

from lab.bench import proxy_bench

BRIEF = ["--requests", "40", "--concurrency", "1,4", "--streams", "4", "--seconds", "0.5", "--rounds", "1"]


def _run(tmp_path, *flags: str) -> dict:
    parser = argparse.ArgumentParser()
    proxy_bench.add_arguments(parser)
    output = tmp_path / "proxy_bench.json"
    affinity = os.sched_getaffinity(0)
    proxy_bench.run(parser.parse_args([*BRIEF, *flags, "--output", str(output)]))
    assert os.sched_getaffinity(0) == affinity  # the load generator's binding ends with the run
    return json.loads(output.read_text())


def test_the_reference_proxy_is_measured_on_the_same_paths_and_compared(tmp_path):
    report = _run(tmp_path, "--reference", "nginx")
    assert report["reference_proxy"].startswith("nginx/")
    for kind in ("single_client_whole", "single_client_stream_ttft"):
        part = report[kind]
        assert part["errors"] == 0
        assert set(part) >= {"direct", "proxied", "reference", "added", "reference_added"}
        assert part["reference_added"]["p50_ms"] == pytest.approx(
            part["reference"]["p50_ms"] - part["direct"]["p50_ms"]
        )
    saturation = report["saturation"]
    assert saturation["errors"] == 0
    assert set(saturation["rate_per_s"]) == {"direct", "proxied", "reference"}
    best = saturation["max_rate_per_s"]
    assert best["reference"] == max(saturation["rate_per_s"]["reference"].values()) > 0
    assert saturation["proxied_share_of_reference"] == pytest.approx(best["proxied"] / best["reference"])
    assert saturation["reference_share_of_direct"] == pytest.approx(best["reference"] / best["direct"])
    assert saturation["reference_cpu_us_per_request"] > 0
    ends, proxies = saturation["client_and_upstream_cpu_us_per_request"], saturation["proxy_cpu_us_per_request"]
    assert set(ends) == {"direct", "proxied", "reference"} and set(proxies) == {"proxied", "reference"}
    for by_level in (*ends.values(), *proxies.values()):
        assert set(by_level) == {"1", "4"} and min(by_level.values()) > 0
    gateway_cpu = proxies["proxied"].values()
    assert min(gateway_cpu) <= saturation["gateway_cpu_us_per_request"] <= max(gateway_cpu)
    assert report["concurrent_streams"]["levels"]["proxied"][0]["errors"] == 0


def test_without_a_reference_the_report_has_the_gateway_alone(tmp_path):
    report = _run(tmp_path, "--reference", "none")
    assert report["reference_proxy"] is None
    assert set(report["saturation"]["rate_per_s"]) == {"direct", "proxied"}
    assert "proxied_share_of_reference" not in report["saturation"]
    assert "reference_added" not in report["single_client_whole"]


def test_asking_for_nginx_where_it_is_missing_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(proxy_bench, "nginx", lambda: None)
    parser = argparse.ArgumentParser()
    proxy_bench.add_arguments(parser)
    with pytest.raises(SystemExit, match="apt-get install nginx"):
        proxy_bench.run(parser.parse_args(["--reference", "nginx"]))
