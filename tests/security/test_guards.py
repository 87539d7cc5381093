"""The guarded API: keys (401), rate limits (429), size limit (413), CORS off unless asked, metrics apart,
and no prompts, completions or keys in the logs."""

import logging

import httpx
import openai
import pytest

from lab.fakes.fake_upstream import Fault
from tests.conftest import free_port, metric
from tests.upstreams import CHAT, client_of, proxy_gateway

KEY = "sk-test-0123456789"


def _chat(base_url: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", json=CHAT, headers=headers, timeout=10)


def test_without_a_key_or_with_a_wrong_one_the_answer_is_a_401(upstream):
    with proxy_gateway(upstream.base_url, api_keys=f"team:{KEY}") as server:
        missing_before = metric(server.base_url, "sinkwatch_auth_failures_total", reason="missing")
        missing = _chat(server.base_url)
        wrong = _chat(server.base_url, authorization="Bearer sk-wrong")
        assert missing.status_code == wrong.status_code == 401
        for response in (missing, wrong):
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
            assert "sk-wrong" not in error["message"]
        assert httpx.get(f"{server.base_url}/v1/models", timeout=10).status_code == 401
        assert metric(server.base_url, "sinkwatch_auth_failures_total", reason="missing") - missing_before == 2


def test_the_official_client_with_its_key_gets_through_and_health_stays_open(upstream):
    with proxy_gateway(upstream.base_url, api_keys=f"team:{KEY}") as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=10)
        assert client.chat.completions.create(**CHAT).choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            client_of(server).chat.completions.create(**CHAT)
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{server.base_url}{path}").status_code == 200


def test_an_address_that_keeps_failing_authentication_is_throttled_on_both_paths(upstream):
    """Issue 19: API keys could be guessed at full speed. After 3 failures, every request from that address
    gets a 429 (the right key too: a different answer would let the guessing go on), others are untouched."""
    with proxy_gateway(upstream.base_url, api_keys=f"team:{KEY}", auth_failure_limit=3) as server:
        throttled_before = metric(server.base_url, "sinkwatch_rate_limited_total", limit="auth_failures")
        guesses = [_chat(server.base_url, authorization=f"Bearer sk-guess-{i}").status_code for i in range(5)]
        assert guesses == [401, 401, 401, 429, 429]
        refused = _chat(server.base_url, authorization=f"Bearer {KEY}")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "auth_failures"
        assert httpx.get(f"{server.base_url}/v1/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 429
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200
        other_address = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10)
        with other_address:
            answer = other_address.post(
                f"{server.base_url}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {KEY}"}
            )
        assert answer.status_code == 200
        assert metric(server.base_url, "sinkwatch_rate_limited_total", limit="auth_failures") - throttled_before == 4


def test_the_gateways_own_schema_and_docs_are_off_unless_enabled(upstream):
    with proxy_gateway(upstream.base_url) as server:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert httpx.get(f"{server.base_url}{path}").status_code == 404
    with proxy_gateway(upstream.base_url, api_docs=True) as server:
        assert httpx.get(f"{server.base_url}/openapi.json").json()["info"]["title"] == "sinkwatch"
        assert httpx.get(f"{server.base_url}/docs").status_code == 200


def test_a_key_over_its_rate_gets_a_429_with_retry_after(upstream):
    with proxy_gateway(upstream.base_url, api_keys=f"a:{KEY},b:sk-other", rate_limit_rps=0.5, rate_limit_burst=2) as s:
        limited_before = metric(s.base_url, "sinkwatch_rate_limited_total", limit="requests")
        answers = [_chat(s.base_url, authorization=f"Bearer {KEY}").status_code for _ in range(3)]
        assert answers == [200, 200, 429]
        refused = _chat(s.base_url, authorization=f"Bearer {KEY}")
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert int(refused.headers["retry-after"]) >= 1
        assert _chat(s.base_url, authorization="Bearer sk-other").status_code == 200
        assert metric(s.base_url, "sinkwatch_rate_limited_total", limit="requests") - limited_before == 2


def test_a_body_over_the_limit_is_a_413_declared_or_streamed(upstream):
    with proxy_gateway(upstream.base_url, max_request_bytes=1000) as server:
        url = f"{server.base_url}/v1/chat/completions"
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
        declared = httpx.post(url, json=big, timeout=10)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "request_too_large"

        def chunks():
            for _ in range(20):
                yield b" " * 100

        undeclared = httpx.post(url, content=chunks(), headers={"content-type": "application/json"}, timeout=10)
        assert undeclared.status_code == 413
        assert _chat(server.base_url).status_code == 200


def test_cors_is_off_unless_origins_are_configured(upstream):
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    with proxy_gateway(upstream.base_url) as server:
        assert "access-control-allow-origin" not in _chat(server.base_url, origin="https://app.example").headers
        refused = httpx.options(f"{server.base_url}/v1/models", headers=preflight)
        assert "access-control-allow-origin" not in refused.headers
    with proxy_gateway(upstream.base_url, cors_origins="https://app.example") as server:
        allowed = httpx.options(f"{server.base_url}/v1/chat/completions", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(f"{server.base_url}/v1/models", headers={**preflight, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_metrics_can_move_to_their_own_port(upstream):
    port = free_port()
    with proxy_gateway(upstream.base_url, metrics_port=port) as server:
        assert _chat(server.base_url).status_code == 200
        assert httpx.get(f"{server.base_url}/metrics").status_code == 404
        apart = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert apart.status_code == 200 and "sinkwatch_requests_total" in apart.text


def test_no_prompt_completion_or_key_reaches_the_logs(upstream, caplog):
    secret_prompt = "my-secret-prompt-7f3a"
    body = {**CHAT, "messages": [{"role": "user", "content": secret_prompt}]}
    with caplog.at_level(logging.DEBUG), proxy_gateway(upstream.base_url, api_keys=f"team:{KEY}") as server:
        url = f"{server.base_url}/v1/chat/completions"
        answer = httpx.post(url, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=10).json()
        httpx.post(url, json=body, headers={"authorization": "Bearer sk-guess-123"}, timeout=10)
        upstream.config.fault = Fault.STATUS_500
        httpx.post(url, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=10)
        httpx.post(url, content=b'{"model": "' + secret_prompt.encode(), headers={"authorization": f"Bearer {KEY}"})
    logged = "\n".join(record.getMessage() for record in caplog.records)
    completion = answer["choices"][0]["message"]["content"]
    assert logged  # the upstream's failure was logged
    for secret in (secret_prompt, completion, KEY, "sk-guess-123"):
        assert secret not in logged
