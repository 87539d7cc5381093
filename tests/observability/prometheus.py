"""A real Prometheus server (Debian's binary) for tests: temp config, free loopback port, HTTP API helpers."""

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import free_port


class PrometheusServer:
    """``prometheus`` scraping ``targets`` (job name -> host:port list) every second, with ``rules`` loaded."""

    def __init__(self, workdir: Path, targets: dict[str, list[str]], rules: list[Path]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is missing: `make rules` installs it (apt-get install prometheus)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rules],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]} for job, addresses in targets.items()
            ],
        }
        self._config = workdir / "prometheus.yml"
        self._config.write_text(yaml.safe_dump(config))
        self._log = workdir / "prometheus.log"
        self._command = [
            binary,
            f"--config.file={self._config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "PrometheusServer":
        with self._log.open("w") as log:
            self._process = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT)
        self.wait_for(lambda: httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200, 60, "Prometheus ready")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def api(self, path: str, **params: Any) -> Any:
        """``GET /api/v1/<path>``; the ``data`` of a successful answer, else AssertionError with the error."""
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30).json()
        assert answer["status"] == "success", f"{path} {params}: {answer.get('errorType')}: {answer.get('error')}"
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query now: the result vector."""
        return self.api("query", query=expr)["result"]

    def alerts(self) -> list[dict]:
        """Pending and firing alerts."""
        return self.api("alerts")["alerts"]

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``condition`` twice a second until it holds; fail with the server log after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except (httpx.HTTPError, AssertionError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; Prometheus log:\n{self._log.read_text()[-3000:]}")
            time.sleep(0.5)

    def wait_for_scrapes(self, job: str, count: int, timeout: float) -> None:
        """Wait until every target of ``job`` has been scraped ``count`` more times from now.

        A labelled counter's series is born at its first increment, so ``rate()`` has data for it only
        once two scrapes have seen it.
        """
        selector = f'up{{job="{job}"}}'
        for scrape in range(count):
            since = time.time()
            self.wait_for(
                lambda since=since: all(float(r["value"][1]) > since for r in self.query(f"timestamp({selector})")),
                timeout,
                f"scrape {scrape + 1} of {count} of every {job} target",
            )
