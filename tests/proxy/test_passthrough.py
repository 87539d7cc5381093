"""The proxy fast path relays the upstream's answers unchanged, and counts them."""

import httpx
import pytest

from lab.fakes.fake_upstream import Fault
from tests.conftest import metric
from tests.upstreams import CHAT, FAKE_MODEL, client_of


def _post(base_url: str, path: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", json=body, headers=headers, timeout=10)


def test_a_whole_answer_is_the_upstreams_bytes(upstream, proxy):
    direct = _post(upstream.base_url, "/chat/completions", CHAT)
    proxied = _post(proxy.base_url, "/v1/chat/completions", CHAT)
    assert proxied.status_code == 200
    assert proxied.content == direct.content
    assert proxied.headers["content-type"] == "application/json"


def test_a_stream_is_the_upstreams_events(upstream, proxy):
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    direct = _post(upstream.base_url, "/chat/completions", body)
    proxied = _post(proxy.base_url, "/v1/chat/completions", body)
    assert proxied.headers["content-type"].startswith("text/event-stream")
    assert proxied.content == direct.content
    assert proxied.text.endswith("data: [DONE]\n\n")


def test_the_official_client_gets_chat_completions_and_streams(proxy):
    client = client_of(proxy)
    whole = client.chat.completions.create(**CHAT)
    streamed = "".join(
        chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(**CHAT, stream=True)
    )
    assert whole.choices[0].message.content == streamed == " w0 w1 w2 w3 w4 w5 w6 w7"
    assert whole.usage.completion_tokens == 8


def test_the_official_client_gets_legacy_completions(proxy):
    client = client_of(proxy)
    whole = client.completions.create(model=FAKE_MODEL, prompt="hi", max_tokens=3)
    streamed = "".join(c.choices[0].text for c in client.completions.create(model=FAKE_MODEL, prompt="hi", stream=True))
    assert whole.choices[0].text == " w0 w1 w2"
    assert whole.choices[0].finish_reason == "length"
    assert streamed == " w0 w1 w2 w3 w4 w5 w6 w7"


def test_tokens_are_counted_from_usage_the_client_did_not_ask_for(proxy):
    before = metric(proxy.base_url, "sinkwatch_tokens_total", model=FAKE_MODEL, type="output")
    chunks = list(client_of(proxy).chat.completions.create(**CHAT, stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert metric(proxy.base_url, "sinkwatch_tokens_total", model=FAKE_MODEL, type="output") - before == 8


def test_a_request_is_counted_with_its_time_to_first_token_and_overhead(proxy):
    labels = {"model": FAKE_MODEL, "endpoint": "chat", "backend": "openai"}
    counted = ("sinkwatch_requests_total", "sinkwatch_time_to_first_token_seconds_count")
    before = [metric(proxy.base_url, name, **labels) for name in counted]
    overhead_before = metric(proxy.base_url, "sinkwatch_gateway_overhead_seconds_count", endpoint="chat")
    list(client_of(proxy).chat.completions.create(**CHAT, stream=True))
    after = [metric(proxy.base_url, name, **labels) for name in counted]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1]
    assert metric(proxy.base_url, "sinkwatch_gateway_overhead_seconds_count", endpoint="chat") - overhead_before == 1
    assert metric(proxy.base_url, "sinkwatch_upstream_requests_total", outcome="ok") >= 1


def test_the_sinkwatch_extension_is_not_sent_upstream(upstream, proxy):
    upstream.config.record_bodies = True
    response = _post(proxy.base_url, "/v1/chat/completions", {**CHAT, "sinkwatch": {"policy": "block"}})
    assert response.status_code == 200
    assert "sinkwatch" not in upstream.stats.bodies[-1]


def test_request_ids_go_upstream_and_come_back(upstream, proxy):
    response = _post(proxy.base_url, "/v1/chat/completions", CHAT, **{"x-request-id": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    assert upstream.stats.request_ids[-1] == "trace-42"
    generated = _post(proxy.base_url, "/v1/chat/completions", CHAT, **{"x-request-id": "a b;c"})
    assert generated.headers["x-request-id"] == upstream.stats.request_ids[-1] != "a b;c"


def test_models_are_the_upstreams(proxy):
    assert [model.id for model in client_of(proxy).models.list()] == [FAKE_MODEL]


def test_an_unknown_model_is_a_404_in_openai_format(proxy):
    response = _post(proxy.base_url, "/v1/chat/completions", {**CHAT, "model": "nope"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert response.json()["error"]["param"] == "model"


def test_an_upstream_client_error_passes_through(upstream, proxy):
    upstream.config.fault = Fault.STATUS_400
    response = _post(proxy.base_url, "/v1/chat/completions", CHAT)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "bad max_tokens",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": None,
    }


def test_connections_to_the_upstream_are_kept_alive(upstream, proxy):
    opened = upstream.stats.connections
    for _ in range(20):
        assert _post(proxy.base_url, "/v1/chat/completions", CHAT).status_code == 200
    assert upstream.stats.connections - opened <= 1


@pytest.mark.parametrize(
    ("extension", "headers", "param"),
    [
        ({"policy": "shout"}, {}, "sinkwatch.policy"),
        ({"policy": "BLOCK"}, {}, "sinkwatch.policy"),  # the body's policy is exact, as on the full path
        ({"policy": 3}, {}, "sinkwatch.policy"),
        ({"mode": "x"}, {}, "sinkwatch.mode"),
        ("block", {}, "sinkwatch"),
        (None, {"x-sinkwatch-policy": "nope"}, "x-sinkwatch-policy"),
    ],
)
def test_a_bad_policy_is_a_400_on_the_fast_path_too(proxy, extension, headers, param):
    body = {**CHAT, "sinkwatch": extension} if extension is not None else CHAT
    response = _post(proxy.base_url, "/v1/chat/completions", body, **headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_a_valid_policy_is_accepted_on_the_fast_path(proxy):
    body = {**CHAT, "sinkwatch": {"policy": "block"}}
    assert _post(proxy.base_url, "/v1/chat/completions", body, **{"x-sinkwatch-policy": "rescue"}).status_code == 200


def test_the_fast_path_words_a_bad_extension_as_the_full_path_does(proxy):
    response = _post(proxy.base_url, "/v1/chat/completions", {**CHAT, "sinkwatch": {"mode": "x"}})
    assert response.json()["error"] == {
        "message": "Unrecognized request argument supplied: sinkwatch.mode",
        "type": "invalid_request_error",
        "param": "sinkwatch.mode",
        "code": "unknown_parameter",
    }
