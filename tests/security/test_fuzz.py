"""Schemathesis fuzzes the gateway against its own OpenAPI schema: valid and invalid requests alike never get
a 5xx or hang, and every error is an OpenAI error body. The schema itself is a valid OpenAPI document.

Two gateways: the full serving path over a scripted backend (pydantic models, session, gate) and the
proxy fast path over the fake upstream; both fast, so the fuzzing fits the default suite.
"""

import json
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from gateway.app import create_app
from gateway.config import Settings
from tests.conftest import RunningServer, free_port
from tests.gate.scripted import CALIBRATION, MODEL, ScriptedBackend

EXAMPLES = 40
TIMEOUT = 10


def _app(port: int = 0):
    configured = Settings().replace(port=port, served_model_name=MODEL)
    return create_app(configured, backend=ScriptedBackend([5]), calibration=CALIBRATION), configured


SCHEMA = schemathesis.openapi.from_dict(
    _app()[0].openapi(),
    config=SchemathesisConfig.from_dict({"generation": {"mode": "all", "max-examples": EXAMPLES}}),
)


@pytest.fixture(scope="module")
def scripted() -> Iterator[RunningServer]:
    app, configured = _app(free_port())
    with RunningServer(app, configured.port) as server:
        yield server


def _assert_answered_well(case, base_url: str) -> None:
    response = case.call(base_url=base_url, timeout=TIMEOUT)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        error = json.loads(response.text)["error"]
        assert isinstance(error["message"], str) and {"type", "param", "code"} <= set(error)


_SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@SCHEMA.parametrize()
@_SETTINGS
def test_the_full_serving_path_never_answers_5xx(case, scripted):
    _assert_answered_well(case, scripted.base_url)


@SCHEMA.parametrize()
@_SETTINGS
def test_the_proxy_fast_path_never_answers_5xx(case, proxy):
    _assert_answered_well(case, proxy.base_url)


def test_the_generated_schema_is_a_valid_openapi_document():
    SCHEMA.validate()
    document = SCHEMA.raw_schema
    assert document["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(document["paths"])
