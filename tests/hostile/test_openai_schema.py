"""Schemathesis fuzzes the gateway with OpenAI's own OpenAPI document, restricted to the operations the
gateway serves, ``model`` pinned to the served name: no request gets a 5xx, and every answer the document
describes matches its schema (the embedded model on the ASGI path, a real gateway process).

The document is ``../shared/openai-openapi/openapi.yaml`` beside the repository (CI lays ``shared/`` there);
without it the module fails to collect rather than passing by skipping. Generation is
bounded: a few tokens per request (``max_tokens`` pinned), one choice, :data:`EXAMPLES` per operation.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import response_schema_conformance

from lab.fakes.processes import Process, gateway_process
from tests.conftest import MODEL

SPEC = Path(__file__).parents[2].parent / "shared" / "openai-openapi" / "openapi.yaml"
SERVED = {"/chat/completions": "post", "/completions": "post", "/models": "get", "/models/{model}": "get"}
EXAMPLES = 30
MAX_TOKENS = 2
TIMEOUT = 60


def _served_operations(document: dict) -> dict:
    """``document`` with only the operations the gateway serves (every component kept for references)."""
    paths = document["paths"]
    document["paths"] = {path: {method: paths[path][method]} for path, method in SERVED.items()}
    return document


def _schema() -> schemathesis.BaseSchema:
    if not SPEC.exists():
        raise FileNotFoundError(f"OpenAI's OpenAPI document is not at {SPEC}: the hostile suite needs it")
    document = yaml.load(SPEC.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    config = {"generation": {"mode": "positive", "max-examples": EXAMPLES}}
    return schemathesis.openapi.from_dict(_served_operations(document), config=SchemathesisConfig.from_dict(config))


SCHEMA = _schema()
pytestmark = pytest.mark.hostile


@pytest.fixture(scope="module")
def gateway() -> Iterator[Process]:
    """The embedded model, served by a real gateway process."""
    with gateway_process("--max-batch", "4", timeout=180) as process:
        yield process


def _pinned(case: schemathesis.Case) -> None:
    """The served model, a few tokens, one choice: what the document allows, bounded in time."""
    if "model" in case.path_parameters:
        case.path_parameters["model"] = MODEL
    if isinstance(case.body, dict):
        case.body["model"] = MODEL
        case.body["max_tokens"] = MAX_TOKENS
        case.body.pop("max_completion_tokens", None)
        for count in ("n", "best_of"):
            if count in case.body:
                case.body[count] = 1


_SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@SCHEMA.parametrize()
@_SETTINGS
def test_openai_s_own_schema_gets_no_5xx_and_schema_conformant_answers(case, gateway):
    _pinned(case)
    case.call_and_validate(
        base_url=gateway.base_url,
        checks=[not_a_server_error, response_schema_conformance],
        timeout=TIMEOUT,
    )
