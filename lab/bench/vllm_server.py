"""A vLLM OpenAI server in a subprocess (its own virtualenv), for benchmarks and integration tests.

vLLM's pins differ from the gateway's, so it lives in another environment (``make vllm-setup`` builds
``.venv-vllm`` with sinkwatch installed there without dependencies, which registers the plugin). The
server runs in a session of its own so that stopping it also stops the engine and worker processes it
spawns.
"""

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lab.fakes.processes import free_port

__all__ = ["VLLMServer", "vllm_python"]

DEFAULT_PYTHON = ".venv-vllm/bin/python"
START_TIMEOUT = 900.0  # seconds: the first start compiles the model, minutes on a busy 2-core CPU


def vllm_python() -> str:
    """``$SINKWATCH_VLLM_PYTHON``, else the project's ``.venv-vllm``."""
    return os.environ.get("SINKWATCH_VLLM_PYTHON", DEFAULT_PYTHON)


@dataclass
class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` on a free loopback port while in the ``with`` block.

    ``env`` is added to the environment (``SINKWATCH_VLLM_PLUGIN=0`` turns the plugin off). The KV cache
    takes ``kv_cache_gib`` (``VLLM_CPU_KVCACHE_SPACE``); None leaves it to flags such as
    ``--kv-cache-memory-bytes``. The server's output goes to ``log_path``.
    """

    model_dir: Path
    served_name: str
    log_path: Path
    dtype: str = "bfloat16"
    max_model_len: int = 2048
    kv_cache_gib: int | None = 2
    env: Mapping[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    python: str = field(default_factory=vllm_python)
    port: int = field(default_factory=free_port)
    _process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL of the OpenAI API (``.../v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_name,
            "--dtype",
            self.dtype,
            "--max-model-len",
            str(self.max_model_len),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.extra_args,
        ]

    def __enter__(self) -> "VLLMServer":
        env = {"HF_HUB_OFFLINE": "1", **os.environ, **self.env}
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
        if self.kv_cache_gib is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_gib)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                raise RuntimeError(f"vLLM exited with {code}; see {self.log_path}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(2)
        raise TimeoutError(f"vLLM was not ready after {START_TIMEOUT:g} s; see {self.log_path}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server's whole process group (API server, engine core, workers)."""
        if self._process is None or self._process.poll() is not None:
            return
        group = os.getpgid(self._process.pid)
        os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is still there
            os.killpg(group, signal.SIGKILL)
        self._process.wait(timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.stop()
