"""Logs of real gateway processes: JSON lines (uvicorn's too), the request id on every line written for a
request and in the ``x-request-id`` header on every path, one access line per request that never holds
a prompt, a completion or a key, and content only with ``--log-content``."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from lab.fakes.fake_upstream import FakeUpstreamConfig, FakeUpstreamThread, Fault
from lab.fakes.processes import Process, gateway_process
from tests.conftest import MODEL, root, wait_for
from tests.upstreams import FAKE_MODEL

KEY = "sk-live-0123456789abcdef"
PROMPT = "the secret prompt about zebras"
HEX_ID = re.compile(r"^[0-9a-f]{32}$")
ACCESS_FIELDS = {"method", "route", "status", "model", "key", "verdict", "gate_action"}
ACCESS_FIELDS |= {"tokens_in", "tokens_out", "latency_s", "ttft_s"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreamThread]:
    with FakeUpstreamThread(FakeUpstreamConfig(tokens=4)) as fake:
        yield fake


class Logged:
    """A gateway process and the lines it wrote to stderr."""

    def __init__(self, process: Process, path: Path) -> None:
        self.process = process
        self.path = path
        self.url = root(process)

    def text(self) -> str:
        return self.path.read_text()

    def lines(self) -> list[dict]:
        """Every line, parsed: each must be a JSON object."""
        return [orjson.loads(line) for line in self.text().splitlines()]

    def access(self, request_id: str) -> dict:
        """The access line of ``request_id``, once written (after the response's last byte)."""
        wait_for(lambda: any(self._access_lines(request_id)), timeout=10)
        (line,) = self._access_lines(request_id)
        return line

    def _access_lines(self, request_id: str) -> list[dict]:
        return [e for e in self.lines() if e["logger"] == "sinkwatch.access" and e.get("request_id") == request_id]


@contextmanager
def logged_gateway(tmp_path: Path, *flags: str) -> Iterator[Logged]:
    path = tmp_path / "gateway.log"
    with path.open("wb") as stderr, gateway_process("--log-level", "info", *flags, stderr=stderr) as process:
        yield Logged(process, path)


def proxying(upstreams: str, *flags: str) -> list[str]:
    return ["--backend", "openai", "--upstreams", upstreams, "--api-keys", f"team:{KEY}", *flags]


def chat(server: Logged, request_id: str, stream: bool = False, path: str = "/v1/chat/completions") -> httpx.Response:
    body = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}
    headers = {"authorization": f"Bearer {KEY}", "x-request-id": request_id}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=10)


@pytest.mark.parametrize("stream", [False, True])
def test_the_access_line_says_how_a_request_went_and_nothing_of_its_content(tmp_path, upstream, stream):
    with logged_gateway(tmp_path, *proxying(upstream.base_url, "--log-format", "json")) as server:
        answer = chat(server, "req-1", stream)
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-1"
        line = server.access("req-1")
        text = server.text()
    assert set(line) >= ACCESS_FIELDS
    assert (line["level"], line["method"], line["route"], line["status"]) == (
        "INFO",
        "POST",
        "/v1/chat/completions",
        200,
    )
    assert (line["model"], line["key"], line["tokens_out"]) == (FAKE_MODEL, "team", 4)
    assert line["tokens_in"] > 0 and 0 < line["latency_s"] < 10
    assert (line["ttft_s"] is not None) == stream
    assert PROMPT not in text and KEY not in text and "w0 w1" not in text  # the fake's completion: " w0 w1 w2 w3"


def test_every_line_is_json_uvicorns_included(tmp_path, upstream):
    with logged_gateway(tmp_path, *proxying(upstream.base_url, "--log-format", "json")) as server:
        chat(server, "req-2")
        server.access("req-2")
        lines = server.lines()
    assert any(e["logger"] == "uvicorn.error" and "Uvicorn running" in e["message"] for e in lines)
    assert all({"time", "level", "logger", "message"} <= set(e) for e in lines)


def test_a_request_id_is_generated_when_the_clients_is_missing_or_not_plain(tmp_path, upstream):
    with logged_gateway(tmp_path, *proxying(upstream.base_url, "--log-format", "json")) as server:
        headers = {"authorization": f"Bearer {KEY}"}
        given = {"missing": {}, "spaces": {"x-request-id": "a b"}, "too long": {"x-request-id": "x" * 129}}
        for extra in given.values():
            body = {"model": FAKE_MODEL, "prompt": "hi"}
            response = httpx.post(server.url + "/v1/completions", json=body, headers={**headers, **extra})
            assert HEX_ID.match(response.headers["x-request-id"]), response.headers
            assert server.access(response.headers["x-request-id"])["status"] == 200


def test_every_path_returns_the_request_id(tmp_path, upstream):
    """Native and ASGI proxying, streams, refusals, unknown routes, health and models."""
    with logged_gateway(tmp_path, *proxying(upstream.base_url, "--log-format", "json")) as server:
        assert chat(server, "native").headers["x-request-id"] == "native"
        assert chat(server, "asgi", path="/v1/chat/completions?via=asgi").headers["x-request-id"] == "asgi"
        stream = openai.OpenAI(
            base_url=server.process.base_url, api_key=KEY, max_retries=0, default_headers={"x-request-id": "sdk-stream"}
        )
        raw = stream.chat.completions.with_raw_response.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert raw.headers["x-request-id"] == "sdk-stream"
        list(raw.parse())
        unauthorized = httpx.post(server.url + "/v1/chat/completions", json={}, headers={"x-request-id": "nokey"})
        assert (unauthorized.status_code, unauthorized.headers["x-request-id"]) == (401, "nokey")
        for path in ("/v1/nothing-here", "/healthz", "/v1/models"):
            response = httpx.get(server.url + path, headers={"authorization": f"Bearer {KEY}", "x-request-id": "get"})
            assert response.headers["x-request-id"] == "get", path
        assert server.access("nokey")["status"] == 401 and server.access("nokey")["key"] is None
        assert server.access("asgi")["model"] == FAKE_MODEL


def test_every_line_written_while_serving_a_request_carries_its_id(tmp_path):
    """A failing upstream makes the pool warn while it serves; the warning names the request."""
    with (
        FakeUpstreamThread(FakeUpstreamConfig(tokens=4, fault=Fault.STATUS_503)) as failing,
        FakeUpstreamThread(FakeUpstreamConfig(tokens=4)) as working,
    ):
        upstreams = f"a={failing.base_url},b={working.base_url}"
        with logged_gateway(tmp_path, *proxying(upstreams, "--log-format", "json")) as server:
            sent = [f"retry-{i}" for i in range(4)]
            for i, request_id in enumerate(sent):
                path = "/v1/chat/completions" + ("?via=asgi" if i % 2 else "")
                assert chat(server, request_id, path=path).status_code == 200
                server.access(request_id)
            warnings = [e for e in server.lines() if "answered 503" in e["message"]]
    assert warnings, "the failing upstream was never tried first"
    assert all(e["request_id"] in sent for e in warnings)


def test_text_lines_carry_the_request_id(tmp_path, upstream):
    with logged_gateway(tmp_path, *proxying(upstream.base_url)) as server:
        chat(server, "text-1")
        wait_for(lambda: "[text-1]" in server.text(), timeout=10)
        (line,) = [line for line in server.text().splitlines() if "[text-1]" in line]
    assert " INFO sinkwatch.access [text-1]: POST /v1/chat/completions 200 " in line
    assert "key=team" in line and "tokens_out=4" in line


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/chat/completions?via=asgi"], ids=["native", "asgi"])
def test_log_content_shows_the_prompt_capped_with_credentials_redacted(tmp_path, upstream, path):
    flags = proxying(upstream.base_url, "--log-format", "json", "--log-content", "--log-content-limit", "300")
    with logged_gateway(tmp_path, *flags) as server:
        body = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": f"{PROMPT} {KEY} " + "z" * 400}]}
        headers = {"authorization": f"Bearer {KEY}", "x-request-id": "content-1"}
        assert httpx.post(server.url + path, json=body, headers=headers).status_code == 200
        server.access("content-1")
        (line,) = [e for e in server.lines() if e["logger"] == "sinkwatch.content"]  # none for /readyz
        text = server.text()
    assert line["request_id"] == "content-1"
    assert line["request_headers"]["authorization"] == "[REDACTED]"
    assert PROMPT in line["request_body"] and "[REDACTED]" in line["request_body"]
    assert line["request_body"].endswith("bytes in all]") and len(line["request_body"]) < 400
    assert "w0 w1 w2 w3" in line["response_body"]
    assert KEY not in text


def test_workers_write_the_same_json_naming_themselves(tmp_path, upstream):
    flags = proxying(upstream.base_url, "--log-format", "json", "--workers", "2")
    with logged_gateway(tmp_path, *flags) as server:
        wait_for(lambda: {e.get("worker") for e in server.lines()} >= {0, 1}, timeout=60)
        for i in range(4):
            chat(server, f"w-{i}")
        served_by = {server.access(f"w-{i}").get("worker") for i in range(4)}
        lines = server.lines()
    assert served_by <= {0, 1}
    assert any("worker" not in e and e["logger"] == "uvicorn.error" for e in lines)  # the supervisor's own


@pytest.mark.model
def test_a_monitored_generation_logs_its_verdict_and_gate_action(tmp_path):
    with logged_gateway(tmp_path, "--log-format", "json") as server:
        body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, "stream": True}
        response = httpx.post(
            server.url + "/v1/chat/completions", json=body, headers={"x-request-id": "gen-1"}, timeout=120
        )
        assert response.status_code == 200 and response.headers["x-request-id"] == "gen-1"
        line = server.access("gen-1")
        text = server.text()
    assert line["model"] == MODEL and line["verdict"] in {"ok", "warn", "sink", "rank_exhaustion"}
    assert line["gate_action"] == "annotate" and line["key"] is None  # no API keys configured
    assert line["tokens_out"] == 8 and line["ttft_s"] is not None and line["tokens_in"] > 0
    assert PROMPT not in text
