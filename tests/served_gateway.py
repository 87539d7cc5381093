"""``sinkwatch serve`` in a process of its own for end-to-end tests: started on a free loopback port, ready
once ``/readyz`` says so, stopped with SIGTERM."""

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai

from lab.fakes.processes import free_port
from tests.conftest import samples, wait_for


class ServedGateway:
    """The gateway with ``flags``, its output in ``log``; ``client`` is the official client pointed at it."""

    def __init__(self, log: Path, *flags: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port), *flags]
        self.log = log
        with log.open("w") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=sink, start_new_session=True)
        wait_for(self._ready, timeout=300, poll=0.5)
        self.client = openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="x", max_retries=0, timeout=300)

    def _ready(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200
        return False

    def recorded(self) -> float:
        """Generations the gateway has written to its traffic recording."""
        return sum(value for _, value in samples(self.base_url, "sinkwatch_recorded_generations_total"))

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
