"""Hot reload with real processes: a change of the API keys file, or SIGHUP after a change of the YAML
settings, puts new keys, rate limits and token budgets in force in every worker, without dropping a
connection; a malformed file keeps the old keys and the log says why."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from lab.fakes.fake_upstream import FakeUpstreamConfig, FakeUpstreamThread
from lab.fakes.processes import free_port
from tests.conftest import wait_for
from tests.upstreams import CHAT

RELOAD_WAIT = 15  # seconds: the keys file is looked at every second


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreamThread]:
    with FakeUpstreamThread(FakeUpstreamConfig(tokens=4)) as fake:
        yield fake


class Gateway:
    """``sinkwatch serve`` in front of the fake upstream, its log in a file."""

    def __init__(self, upstream: FakeUpstreamThread, log: Path, *flags: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port)]
        command += ["--backend", "openai", "--upstreams", upstream.base_url, "--upstream-health-interval", "0.2"]
        command += ["--shutdown-timeout", "5"]  # a connection left open cannot hold the stop for the default 30 s
        command += ["--auth-failure-limit", "0"]  # the keys refused while waiting for a reload are no attack
        self.log = log
        with log.open("w") as sink:
            self.process = subprocess.Popen([*command, *flags], stdout=sink, stderr=sink, start_new_session=True)
        wait_for(self._ready, timeout=60, poll=0.2)

    def _ready(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        return False

    def status(self, key: str | None = None) -> int:
        """The status of a chat request with ``key``, on a connection of its own."""
        headers = {"connection": "close", **({"authorization": f"Bearer {key}"} if key else {})}
        return httpx.post(f"{self.base_url}/chat/completions", json=CHAT, headers=headers, timeout=10).status_code

    def statuses(self, key: str | None, count: int) -> list[int]:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda _: self.status(key), range(count)))

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(30)


@contextlib.contextmanager
def gateway(upstream: FakeUpstreamThread, tmp_path: Path, *flags: str) -> Iterator[Gateway]:
    server = Gateway(upstream, tmp_path / "gateway.log", *flags)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_changed_keys_file_is_reloaded_by_every_worker_while_a_stream_goes_on(upstream, tmp_path, workers):
    keys = tmp_path / "keys"
    keys.write_text("team:sk-first\n")
    with gateway(upstream, tmp_path, "--api-keys-file", str(keys), "--workers", workers) as server:
        assert set(server.statuses("sk-first", 8)) == {200}
        upstream.config.tokens, upstream.config.token_interval = 20, 0.1
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-first", max_retries=0, timeout=30)
        stream = client.chat.completions.create(**CHAT, stream=True)
        text = [next(stream).choices[0].delta.content or ""]
        reading = threading.Thread(
            target=lambda: text.extend(c.choices[0].delta.content or "" for c in stream if c.choices)
        )
        reading.start()
        keys.write_text("team:sk-second\n")
        wait_for(lambda: set(server.statuses("sk-second", 8)) == {200}, timeout=RELOAD_WAIT, poll=0.5)
        upstream.config.tokens, upstream.config.token_interval = 4, 0.0
        assert set(server.statuses("sk-first", 8)) == {401}
        reading.join(30)
        assert len("".join(text).split()) == 20  # the stream begun before the reload ran to its end


def test_a_malformed_keys_file_keeps_the_old_keys_and_logs_why(upstream, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("team:sk-first\n")
    with gateway(upstream, tmp_path, "--api-keys-file", str(keys)) as server:
        keys.write_text("no-separator-here\n")
        wait_for(lambda: "keeping the API keys" in server.log.read_text(), timeout=RELOAD_WAIT, poll=0.5)
        assert "no-separator-here" not in server.log.read_text()  # the log never shows a key
        assert server.status("sk-first") == 200
        keys.write_text("team:sk-fixed\n")
        wait_for(lambda: server.status("sk-fixed") == 200, timeout=RELOAD_WAIT, poll=0.5)


def test_sighup_reloads_the_rate_limits_from_the_yaml_file_in_every_worker(upstream, tmp_path):
    config = tmp_path / "sinkwatch.yaml"
    config.write_text("api_keys: [team:sk-team]\n")
    with gateway(upstream, tmp_path, "--config", str(config), "--workers", "2") as server:
        assert set(server.statuses("sk-team", 8)) == {200}
        config.write_text("api_keys: [team:sk-team]\nrate_limit_rps: 0.001\nrate_limit_burst: 2\n")
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for(lambda: "reloaded" in server.log.read_text(), timeout=RELOAD_WAIT, poll=0.2)
        wait_for(lambda: server.log.read_text().count("reloaded") >= 2, timeout=RELOAD_WAIT, poll=0.2)
        assert sorted(server.statuses("sk-team", 8)) == [200] * 2 + [429] * 6  # one burst across both workers
        assert server.process.poll() is None


def test_a_token_budget_shared_by_the_workers_refuses_a_key_in_debt_with_retry_after(upstream, tmp_path):
    # Each fake answer costs 4 completion tokens plus its prompt's: the first request puts the key in debt.
    with gateway(upstream, tmp_path, "--api-keys", "team:sk-team", "--rate-limit-tpm", "6", "--workers", "2") as server:
        assert server.status("sk-team") == 200
        refused = [
            httpx.post(
                f"{server.base_url}/chat/completions",
                json=CHAT,
                headers={"connection": "close", "authorization": "Bearer sk-team"},
                timeout=10,
            )
            for _ in range(6)
        ]
        assert {r.status_code for r in refused} == {429}
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert all("tokens" in r.json()["error"]["message"] for r in refused)
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=server.base_url, api_key="sk-team", max_retries=0).chat.completions.create(**CHAT)
