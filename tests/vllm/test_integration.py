"""The vllm backend in front of a real vLLM server with the plugin, checked against the embedded engine.

Both run SmolLM2-135M-Instruct in float32 on the same greedy prompts, so they generate the same tokens;
the plugin computes features from vLLM's decode-time states with the embedded engine's extractor, so the
stability reports must agree up to the two engines' arithmetic (different kernels and batching): verdicts,
token counts and token indices exactly, statistics within the tolerances below (docs/VLLM.md says why).
The server prefills long prompts in chunks and is small enough that concurrent requests preempt each
other.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import httpx
import openai
import pytest

from lab.bench.vllm_server import VLLMServer
from tests.backends.fake_vllm import MODEL
from tests.conftest import RunningServer, metric

pytestmark = pytest.mark.vllm

MAX_TOKENS = 64
ENTROPY_TOLERANCE = 0.02  # nats, on the mean next-token entropy
STATISTIC_TOLERANCE = 0.01  # relative (absolute below 1) on every band statistic


def _prompts() -> dict[str, list[dict]]:
    data = resources.files("monitors") / "data"
    rows = {
        row["id"]: row["messages"]
        for name in ("prompts_normal.jsonl", "prompts_loop.jsonl")
        for row in map(json.loads, (data / name).read_text().splitlines())
    }
    chosen = {key: rows[key] for key in ("normal-000", "normal-001", "normal-002", "loop-000", "loop-002")}
    notes = "\n".join(f"- {rows[f'normal-{i:03d}'][0]['content']}" for i in range(20))
    chosen["long"] = [{"role": "user", "content": f"Here are questions people asked:\n{notes}\nAnswer the first."}]
    return chosen


PROMPTS = _prompts()


def _client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=600)


def _ask(server: RunningServer, messages: list[dict], stream: bool = False, **extra) -> tuple[str, dict]:
    """Text and stability report of a greedy answer."""
    options = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0.0, **extra}
    client = _client(server)
    if not stream:
        answer = client.chat.completions.create(**options)
        return answer.choices[0].message.content, answer.model_extra["stability"]
    text, report = "", None
    for chunk in client.chat.completions.create(stream=True, **options):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        report = (chunk.model_extra or {}).get("stability") or report
    return text, report


def _assert_reports_agree(got: dict, want: dict) -> None:
    for exact in ("verdict", "tokens_monitored", "onset_token", "last_stable_token", "repetition_mean"):
        assert got[exact] == want[exact], exact
    assert {r["signal"] for r in got["reasons"]} == {r["signal"] for r in want["reasons"]}
    assert got["entropy_mean"] == pytest.approx(want["entropy_mean"], abs=ENTROPY_TOLERANCE)
    assert got["bands"].keys() == want["bands"].keys()
    for band, stats in want["bands"].items():
        for name, value in stats.items():
            if isinstance(value, float):
                close = pytest.approx(value, rel=STATISTIC_TOLERANCE, abs=STATISTIC_TOLERANCE)
                assert got["bands"][band][name] == close, f"{band}.{name}"
            else:
                assert got["bands"][band][name] == value, f"{band}.{name}"


def _vllm_counter(server: VLLMServer, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url.removesuffix("/v1") + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


@pytest.fixture(scope="module")
def embedded_answers(gateway: RunningServer) -> dict[str, tuple[str, dict]]:
    """The embedded engine's answers and reports (the reference)."""
    return {name: _ask(gateway, messages) for name, messages in PROMPTS.items()}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_reports_agree_with_the_embedded_engines(real_vllm_gateway, embedded_answers, name):
    missing = metric(real_vllm_gateway.base_url, "sinkwatch_vllm_stats_total", outcome="missing")
    text, report = _ask(real_vllm_gateway, PROMPTS[name])
    want_text, want = embedded_answers[name]
    assert text == want_text
    _assert_reports_agree(report, want)
    assert metric(real_vllm_gateway.base_url, "sinkwatch_vllm_stats_total", outcome="missing") == missing


def test_concurrent_preempted_streams_each_get_their_own_report(real_vllm_gateway, vllm_server, embedded_answers):
    preemptions = _vllm_counter(vllm_server, "vllm:num_preemptions_total")
    names = list(PROMPTS) * 2
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda name: _ask(real_vllm_gateway, PROMPTS[name], stream=True), names))
    for name, (text, report) in zip(names, answers, strict=True):
        want_text, want = embedded_answers[name]
        assert text == want_text
        _assert_reports_agree(report, want)
    assert _vllm_counter(vllm_server, "vllm:num_preemptions_total") > preemptions


def test_rescue_resamples_a_collapsing_answer_on_vllm(real_vllm_gateway, embedded_answers):
    fired = [name for name, (_, report) in embedded_answers.items() if report["verdict"] != "ok"]
    assert fired, "no prompt collapses within the token budget: the rescue path is not exercised"
    _, report = _ask(real_vllm_gateway, PROMPTS[fired[0]], extra_body={"sinkwatch": {"policy": "rescue"}})
    attempts = report["gate"]["attempts"]
    assert len(attempts) >= 2 and attempts[0]["fired_at_token"] is not None
    assert all(attempt["error"] is None for attempt in attempts)
    assert report["gate"]["action"] in ("rescue", "block")


def test_an_upstream_refusal_is_an_openai_error(real_vllm_gateway):
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(real_vllm_gateway, PROMPTS["normal-000"], max_tokens=5000)
    assert refused.value.status_code == 400 and "max_tokens" in refused.value.message


def test_a_client_that_goes_away_leaves_the_engine_and_the_plugin_serving(real_vllm_gateway, vllm_server):
    options = {"model": MODEL, "messages": PROMPTS["normal-001"], "max_tokens": 200, "temperature": 0.0}
    stream = _client(real_vllm_gateway).chat.completions.create(stream=True, **options)
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    stream.close()
    _, report = _ask(real_vllm_gateway, PROMPTS["normal-002"])
    assert report["tokens_monitored"] > 0
    log = vllm_server.log_path.read_text(errors="replace")
    assert "sinkwatch: monitoring decoder layers" in log
    assert "failed to publish" not in log and "no longer monitored" not in log
