"""Small doors of a proxying gateway process, attacked from loopback: API keys guessed at full speed,
the gateway's own schema and docs, upstream addresses on ``/metrics``, counts that are not integers.

The gateway relays to a fake upstream (``lab.fakes.fake_upstream``, in its own process); generation
requests take the native fast path, ``/v1/models`` the ASGI one.
"""

from collections.abc import Iterator

import httpx
import openai
import pytest

from lab.fakes.processes import Process, fake_upstream_process, gateway_process
from tests.conftest import metric, root, samples
from tests.hostile.probes import HealthWatch, settles_to
from tests.upstreams import CHAT, FAKE_MODEL

pytestmark = pytest.mark.hostile

KEY = "sk-hostile-0123456789"
FAILURES_ALLOWED = 5
ATTACKER = "127.0.0.3"  # the brute force comes from its own loopback address; users stay on 127.0.0.1


@pytest.fixture(scope="module")
def upstream() -> Iterator[Process]:
    with fake_upstream_process(tokens=8) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(upstream: Process) -> Iterator[Process]:
    """A proxying gateway with one unnamed upstream, API keys and failed-key throttling."""
    flags = ["--backend", "openai", "--upstreams", upstream.base_url, "--api-keys", f"team:{KEY}"]
    with gateway_process(*flags, "--auth-failure-limit", str(FAILURES_ALLOWED)) as process:
        yield process


def _from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def test_guessing_api_keys_is_throttled_per_address_and_costs_bounded_memory(gateway):
    """Issue 19: failed keys were answered 401 as fast as they came. After ``FAILURES_ALLOWED`` failures an
    address gets 429 on both paths, with its right key too; users elsewhere are not affected."""
    user = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=10)
    user.chat.completions.create(**CHAT)
    rss, files = gateway.rss_bytes(), gateway.open_files()
    url = f"{gateway.base_url}/chat/completions"
    with HealthWatch(root(gateway)) as health, _from(ATTACKER) as attacker:
        guesses = [
            attacker.post(url, json=CHAT, headers={"authorization": f"Bearer sk-guess-{i}"}).status_code
            for i in range(FAILURES_ALLOWED + 20)
        ]
        right_key = {"authorization": f"Bearer {KEY}"}
        refused = [attacker.post(url, json=CHAT, headers=right_key), attacker.get(f"{gateway.base_url}/models")]
        assert user.chat.completions.create(**CHAT).choices[0].message.content
        assert user.models.list().data[0].id == FAKE_MODEL
    assert guesses == [401] * FAILURES_ALLOWED + [429] * 20
    for answer in refused:
        assert answer.status_code == 429 and int(answer.headers["retry-after"]) >= 1
        assert answer.json()["error"]["code"] == "auth_failures"
    assert metric(root(gateway), "sinkwatch_rate_limited_total", limit="auth_failures") >= 22
    health.assert_healthy()
    # many addresses failing once each: the address table is bounded, memory and sockets come back
    for last in range(1, 201):
        with _from(f"127.0.1.{last}") as client:
            assert client.post(url, json=CHAT).status_code == 401
    settles_to(gateway.open_files, files, slack=8)
    settles_to(gateway.rss_bytes, rss, slack=32 * 2**20)


def test_the_gateways_own_schema_and_docs_are_not_served(gateway):
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(f"{root(gateway)}{path}", timeout=10).status_code == 404


def test_metrics_name_upstreams_by_configuration_never_by_address(gateway, upstream):
    names = {labels["upstream"] for labels, _ in samples(root(gateway), "sinkwatch_upstream_up")}
    assert names == {"upstream-1"}
    address = upstream.base_url.split("//")[1].split("/")[0]
    assert address not in httpx.get(f"{root(gateway)}/metrics", timeout=10).text


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [4.0, True])
def test_a_count_that_is_not_an_integer_is_refused_on_the_fast_path(gateway, field, value):
    headers = {"authorization": f"Bearer {KEY}"}
    answer = httpx.post(
        f"{gateway.base_url}/chat/completions", json={**CHAT, field: value}, headers=headers, timeout=10
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == field
