"""Hostile or broken input gets a 4xx OpenAI error, never a 5xx or a hang: on the proxy fast path, on the full
serving path (scripted backend), and on the real model where the engine is involved."""

import json
from collections.abc import Iterator

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from tests.conftest import MODEL, RunningServer, free_port
from tests.gate.scripted import CALIBRATION, ScriptedBackend
from tests.gate.scripted import MODEL as SCRIPTED_MODEL
from tests.upstreams import FAKE_MODEL

NASTY_TEXT = "nul\x00 rtl\u202eevil\u202c zwj\u200d\U0001f469\u200d\U0001f4bb combining e\u0301 bom\ufeff"


def _bodies(model: str) -> dict[str, bytes]:
    def chat(**fields) -> bytes:
        return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}).encode()

    return {
        "truncated JSON": b'{"model": "',
        "not an object": b"[1, 2, 3]",
        "a JSON string": b'"hello"',
        "NaN": b'{"model": "%s", "messages": [], "temperature": NaN}' % model.encode(),
        "lone surrogate": b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}' % model.encode(),
        "invalid UTF-8": b'{"model": "\xff\xfe"}',
        "nested 100000 deep": b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "model of the wrong type": json.dumps({"model": 5, "messages": []}).encode(),
        "messages of the wrong type": json.dumps({"model": model, "messages": "hi"}).encode(),
        "no messages": json.dumps({"model": model}).encode(),
        "max_tokens as text": chat(max_tokens="ten"),
        "max_tokens negative": chat(max_tokens=-1),
        "max_tokens a boolean": chat(max_tokens=True),
        "max_tokens a float": chat(max_tokens=4.0),
        "max_completion_tokens a boolean": chat(max_completion_tokens=True),
        "stream as text": chat(stream="yes"),
    }


@pytest.fixture(scope="module")
def scripted() -> Iterator[RunningServer]:
    """The full serving path (pydantic models, session, gate) over a scripted backend."""
    settings = Settings().replace(port=free_port(), served_model_name=SCRIPTED_MODEL)
    app = create_app(settings, backend=ScriptedBackend([5]), calibration=CALIBRATION)
    with RunningServer(app, settings.port) as server:
        yield server


def _assert_openai_client_error(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("case", list(_bodies("m")))
def test_the_proxy_fast_path_answers_broken_input_with_a_client_error(proxy, case):
    body = _bodies(FAKE_MODEL)[case]
    response = httpx.post(f"{proxy.base_url}/v1/chat/completions", content=body, timeout=10)
    _assert_openai_client_error(response)


@pytest.mark.parametrize("case", list(_bodies("m")))
def test_the_full_serving_path_answers_broken_input_with_a_client_error(scripted, case):
    body = _bodies(SCRIPTED_MODEL)[case]
    response = httpx.post(f"{scripted.base_url}/v1/chat/completions", content=body, timeout=10)
    _assert_openai_client_error(response)


def test_invalid_json_reads_the_same_on_both_paths(proxy, scripted):
    answers = [
        httpx.post(f"{server.base_url}/v1/chat/completions", content=b"{oops", timeout=10).json()["error"]
        for server in (proxy, scripted)
    ]
    assert answers[0] == answers[1]
    assert answers[0]["code"] == "invalid_json"


@pytest.mark.parametrize("fields", [{"max_tokens": 4.0}, {"max_tokens": True}, {"max_completion_tokens": 2.0}])
def test_a_count_given_as_a_float_or_boolean_is_refused_alike_on_both_paths(proxy, scripted, fields):
    """Issue 19: ``max_tokens: 4.0`` or ``true`` passed on one path and not the other."""
    errors = []
    for server, model in ((proxy, FAKE_MODEL), (scripted, SCRIPTED_MODEL)):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=10)
        assert response.status_code == 400, response.text
        errors.append(response.json()["error"])
    assert {(e["type"], e["param"], e["code"]) for e in errors} == {("invalid_request_error", *fields, "invalid_value")}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": True}, "temperature"),
        ({"top_p": False}, "top_p"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"presence_penalty": -2.1}, "presence_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"logit_bias": {"5": True}}, "logit_bias.5"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": "x" * 1025}, "stop"),
        ({"seed": 1.5}, "seed"),
        ({"n": True}, "n"),
    ],
)
def test_sampling_values_out_of_range_or_of_the_wrong_type_are_refused(scripted, fields, param):
    body = {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}
    response = httpx.post(f"{scripted.base_url}/v1/chat/completions", json=body, timeout=10)
    _assert_openai_client_error(response)
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": 10**30}, "max_tokens"),
        ({"max_tokens": 2**63}, "max_tokens"),
        ({"seed": 2**80}, "seed"),
        ({"logit_bias": {"99999999999999999999": 5}}, "logit_bias"),
        ({"logit_bias": {"60000": 5}}, "logit_bias"),
        ({"logit_bias": {"-3": 5}}, "logit_bias"),
    ],
)
def test_out_of_range_numbers_are_refused_by_the_real_model_with_their_param(gateway, fields, param):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30)
    _assert_openai_client_error(response)
    assert response.json()["error"]["param"] == param


def test_unicode_edge_cases_are_served_by_the_real_model(client):
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": NASTY_TEXT}], max_tokens=3, temperature=0
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    legacy = client.completions.create(model=MODEL, prompt=NASTY_TEXT, max_tokens=3, temperature=0)
    assert isinstance(legacy.choices[0].text, str)
