"""/metrics reflects the traffic served: requests, tokens, latency, TTFT, verdicts, per-band PR."""

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL


def _samples(base_url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{base_url}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _total(samples, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= set(lbls))


def test_a_monitored_request_moves_every_request_metric(client, gateway):
    before = _samples(gateway.base_url)
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a forest."}], max_tokens=40, temperature=0
    )
    after = _samples(gateway.base_url)

    def delta(name: str, **labels) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    assert delta("sinkwatch_requests_total", model=MODEL, endpoint="chat", outcome="ok") == 1
    assert delta("sinkwatch_tokens_total", model=MODEL, type="output") == response.usage.completion_tokens
    assert delta("sinkwatch_tokens_total", model=MODEL, type="input") == response.usage.prompt_tokens
    assert delta("sinkwatch_request_duration_seconds_count", endpoint="chat") == 1
    assert delta("sinkwatch_time_to_first_token_seconds_count", endpoint="chat") == 1
    verdict = response.model_extra["stability"]["verdict"]
    assert delta("sinkwatch_verdicts_total", model=MODEL, verdict=verdict) == 1
    assert delta("sinkwatch_participation_ratio_count", model=MODEL, band="late") == 1
    assert _total(after, "sinkwatch_model_ready", model=MODEL) == 1


def test_errors_are_counted_by_type(gateway):
    before = _samples(gateway.base_url)
    httpx.post(f"{gateway.base_url}/v1/chat/completions", json={"model": "nope", "messages": []})
    after = _samples(gateway.base_url)
    key = "sinkwatch_errors_total"
    assert _total(after, key, endpoint="chat", type="invalid_request_error") == (
        _total(before, key, endpoint="chat", type="invalid_request_error") + 1
    )
