"""A real Prometheus scrapes real gateways serving the real model: forced collapses make their alert go
pending, then firing, and every dashboard query parses and returns data.

The stack: the session's embedded gateway; a second gateway in its own process with the ``openai``
backend, API keys and a rate limit, proxying to three upstreams (the embedded gateway, a fake upstream
that resets its streams, and an address where nothing listens); a third, embedded, recording what it
serves under ``observe`` (``--record-dir``); and Prometheus scraping the three gateways
every second and evaluating the real rules file with every ``for:`` shortened to a few seconds (the
promtool unit tests check the real durations).
"""

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from grafana.generate import DASHBOARDS, Panel, Variable
from lab.fakes.fake_upstream import FakeUpstreamConfig, FakeUpstreamThread, Fault
from tests.conftest import MODEL, free_port
from tests.observability.prometheus import PrometheusServer
from tests.observability.sources import rule_groups

pytestmark = pytest.mark.model

SHORT_FOR = "3s"
# What this stack produces traffic for (see grafana.generate.Panel.requires); vLLM panels only parse.
STACK_PROVIDES = {"proxy", "auth"}
PROXY_KEY = "proxy-test-key"
# Greedy decoding with a repetition *reward* (penalty < 1) on loop-prone prompts: the served model loops.
FORCED_COLLAPSE_PROMPTS = (
    "Write a poem where every line starts with 'I am'.",
    "Tell me about the ocean.",
    "Write a very long story about a cat who goes on an adventure.",
    "Tell me everything you know about cheese.",
    "Describe a forest.",
)
NORMAL_PROMPTS = (
    "Explain photosynthesis to a curious teenager in a short paragraph.",
    "Give me three interesting facts about photosynthesis.",
    "Summarize the history of black holes in a few sentences.",
    "Describe how vaccines work using a simple analogy.",
    "What are the main causes of the French Revolution?",
    "Name two uses of copper.",
)
# The alert each collapse verdict pages with, and its labels: the shipped calibration counts its sink target
# per 1,000 tokens, so sinks page per 1,000 completion tokens (per model, no verdict label).
COLLAPSE_ALERTS = {
    "sink": ("SinkwatchSinkRatePer1kTokensHigh", {}),
    "rank_exhaustion": ("SinkwatchRankExhaustionRateHigh", {"verdict": "rank_exhaustion"}),
}


@dataclass
class Stack:
    """The running stack and what the load run saw."""

    prometheus: PrometheusServer
    forced_verdicts: list[str]


class GatewayProcess:
    """``sinkwatch serve`` in its own process (its own metrics registry), on a free loopback port."""

    def __init__(self, workdir: Path, *flags: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log = workdir / f"gateway-{self.port}.log"
        self._command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port), *flags]
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "GatewayProcess":
        with self._log.open("w") as log:
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}
            self._process = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while not self._ready():
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"the proxy gateway did not become ready:\n{self._log.read_text()[-3000:]}")
            time.sleep(0.5)
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _shortened_rules() -> str:
    """The real rules file with every alert's ``for:`` shortened; nothing else changes."""
    groups = rule_groups()
    for rule in (rule for group in groups for rule in group["rules"]):
        if "for" in rule:
            rule["for"] = SHORT_FOR
    return yaml.safe_dump({"groups": groups}, sort_keys=False)


async def _load_embedded(base_url: str) -> list[str]:
    """Normal and forced-collapse requests of every shape; returns the forced requests' verdicts."""
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600)
    slots = asyncio.Semaphore(8)

    async def chat(content: str, policy: str = "annotate", **sampling) -> str:
        async with slots:
            response = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": content}],
                extra_headers={"x-sinkwatch-policy": policy},
                **sampling,
            )
        return response.model_extra["stability"]["verdict"]

    async def stream() -> None:
        async with slots:
            chunks = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Say hello in French."}],
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for _ in chunks:
                pass

    async def completion() -> None:
        async with slots:
            await client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12)

    async def unknown_model() -> None:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])

    forcing = {"max_tokens": 64, "temperature": 0, "extra_body": {"repetition_penalty": 0.8}}
    forced = [chat(prompt, "block", **forcing) for prompt in FORCED_COLLAPSE_PROMPTS]
    rescued = chat(FORCED_COLLAPSE_PROMPTS[-1], "rescue", **forcing)
    normal = [chat(prompt, max_tokens=24, temperature=0.7, seed=i) for i, prompt in enumerate(NORMAL_PROMPTS)]
    results = await asyncio.gather(*forced, rescued, *normal, stream(), completion(), unknown_model())
    return list(results[: len(forced)])


def _load_proxy(base_url: str) -> None:
    """Through the proxy: answers, a stream its upstream resets, a wrong key, and one request too many."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=PROXY_KEY, max_retries=0, timeout=300)
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong-key").models.list()
    for content in ("Name a colour.", "Name a fruit."):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=8)
    with pytest.raises(openai.APIError):
        chunks = client.chat.completions.create(
            model="flaky-model", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
        )
        for _ in chunks:
            pass
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)


def _load_recorder(base_url: str) -> None:
    """Answers under observe on the gateway that records them (--record-dir)."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    for content in NORMAL_PROMPTS[:2]:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=16)


@pytest.fixture(scope="module")
def stack(gateway, tmp_path_factory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("observability")
    rules = workdir / "sinkwatch.rules.yml"
    rules.write_text(_shortened_rules())
    flaky = FakeUpstreamConfig(model="flaky-model", fault=Fault.RESET)
    with FakeUpstreamThread(flaky) as fake:
        upstreams = f"local={gateway.base_url}/v1,flaky={fake.base_url},dead=http://127.0.0.1:{free_port()}/v1"
        proxy_flags = ("--backend", "openai", "--upstreams", upstreams, "--upstream-health-interval", "1")
        limits = ("--api-keys", f"ops:{PROXY_KEY}", "--rate-limit-rps", "0.05", "--rate-limit-burst", "3")
        recording = ("--policy", "observe", "--record-dir", str(workdir / "recording"))
        with (
            GatewayProcess(workdir, *proxy_flags, *limits, "--log-level", "warning") as proxy,
            GatewayProcess(workdir, *recording, "--log-level", "warning") as recorder,
        ):
            gateways = (gateway.base_url, proxy.base_url, recorder.base_url)
            addresses = [url.removeprefix("http://") for url in gateways]
            with PrometheusServer(workdir, {"sinkwatch-gateway": addresses}, [rules]) as prometheus:
                # Every increment must happen after a first scrape, and be seen by two more, or rate() cannot see it.
                prometheus.wait_for(
                    lambda: len(prometheus.query('up{job="sinkwatch-gateway"} == 1')) == len(gateways),
                    60,
                    "every gateway up",
                )
                forced = asyncio.run(_load_embedded(gateway.base_url))
                _load_proxy(proxy.base_url)
                _load_recorder(recorder.base_url)
                prometheus.wait_for_scrapes("sinkwatch-gateway", count=2, timeout=30)
                yield Stack(prometheus, forced)


def _wait_for_firing(prometheus: PrometheusServer, alertname: str, **labels: str) -> None:
    def firing() -> bool:
        return any(
            a["labels"]["alertname"] == alertname and labels.items() <= a["labels"].items() and a["state"] == "firing"
            for a in prometheus.alerts()
        )

    prometheus.wait_for(firing, 90, f"{alertname} {labels} firing; alerts now: {prometheus.alerts()}")


def _was_pending(prometheus: PrometheusServer, alertname: str, selector: str) -> bool:
    query = f'max_over_time(ALERTS{{alertname="{alertname}",alertstate="pending",{selector}}}[10m])'
    return bool(prometheus.query(query))


def test_forced_collapses_make_their_alert_go_pending_then_firing(stack):
    collapses = Counter(verdict for verdict in stack.forced_verdicts if verdict in COLLAPSE_ALERTS)
    assert collapses, f"no forced generation collapsed (verdicts {stack.forced_verdicts}): the detector changed"
    mode, _ = collapses.most_common(1)[0]
    alertname, labels = COLLAPSE_ALERTS[mode]
    _wait_for_firing(stack.prometheus, alertname, model=MODEL, **labels)
    assert _was_pending(stack.prometheus, alertname, f'model="{MODEL}"')


def test_forced_blocks_page_per_1k_completion_tokens_as_the_shipped_calibration_counts(stack):
    """The shipped calibration counts its sink target per 1,000 tokens: blocks page in that unit, and the
    share-of-generations block alert stays silent."""
    blocked = sum(verdict in COLLAPSE_ALERTS for verdict in stack.forced_verdicts)
    assert blocked >= 3, f"only {blocked} forced generations collapsed (verdicts {stack.forced_verdicts})"
    _wait_for_firing(stack.prometheus, "SinkwatchBlockRatePer1kTokensHigh", model=MODEL, action="block")
    assert _was_pending(stack.prometheus, "SinkwatchBlockRatePer1kTokensHigh", f'model="{MODEL}"')
    assert not _was_pending(stack.prometheus, "SinkwatchBlockRateHigh", f'model="{MODEL}"')


def test_an_upstream_nobody_listens_on_makes_upstream_down_fire_for_it_alone(stack):
    _wait_for_firing(stack.prometheus, "SinkwatchUpstreamDown", upstream="dead")
    assert _was_pending(stack.prometheus, "SinkwatchUpstreamDown", 'upstream="dead"')
    firing = {a["labels"].get("upstream") for a in stack.prometheus.alerts() if a["state"] == "firing"}
    assert not {"local", "flaky"} & firing


def _resolve(prometheus: PrometheusServer, variable: Variable, values: dict[str, str]) -> list[str]:
    selector = variable.selector.replace("$model", values.get("model", ".*"))
    return prometheus.api(f"label/{variable.name}/values", **{"match[]": selector})


def _variable_values(prometheus: PrometheusServer, dashboard) -> dict[str, str]:
    """What Grafana would substitute: the served model, and every value of the other variables."""
    values = {"model": MODEL, "__rate_interval": "5m"}
    for variable in dashboard.variables:
        resolved = _resolve(prometheus, variable, values)
        assert resolved, f"variable {variable.name} of {dashboard.uid} has no values"
        if variable.name == "model":
            assert MODEL in resolved
        else:
            values[variable.name] = "|".join(resolved)
    return values


def _substituted(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    return expr


PANELS = [(d, p) for d in DASHBOARDS for p in d.panels()]


@pytest.mark.parametrize(("dashboard", "panel"), PANELS, ids=[f"{d.uid}:{p.title}" for d, p in PANELS])
def test_every_dashboard_query_parses_and_returns_data(stack, dashboard, panel: Panel):
    values = _variable_values(stack.prometheus, dashboard)
    for query in panel.queries:
        result = stack.prometheus.query(_substituted(query.expr, values))
        if panel.requires is None or panel.requires in STACK_PROVIDES:
            assert result, f"no data for {query.expr}"


def test_the_band_variable_lists_the_calibrated_bands(stack):
    band = next(v for v in DASHBOARDS[1].variables if v.name == "band")
    assert set(_resolve(stack.prometheus, band, {"model": MODEL})) == {"early", "middle", "late"}
