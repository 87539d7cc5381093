"""Servers in their own processes, for benchmarks and load tests: the gateway and the fake upstream."""

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

__all__ = [
    "Process",
    "children",
    "fake_upstream_process",
    "free_port",
    "gateway_process",
    "proc_file",
    "py_spy",
    "running",
]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    """A server process and the base URL of its OpenAI API."""

    popen: subprocess.Popen
    base_url: str
    wrapped: bool = False  # the server is the first child of the process started

    @property
    def pid(self) -> int:
        """The server's process id (the wrapped child's: under a profiler, or nginx's worker under its master)."""
        return children(self.popen.pid)[0] if self.wrapped else self.popen.pid

    def rss_bytes(self) -> int:
        """Resident memory, from /proc: the server's and its worker processes' (``--workers``)."""
        return sum(_rss_bytes(pid) for pid in _with_descendants(self.pid))

    def open_files(self) -> int:
        """Open file descriptors (sockets included), the server's and its worker processes'."""
        return sum(_open_files(pid) for pid in _with_descendants(self.pid))

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far, the server's and its worker processes'."""
        return sum(_cpu_seconds(pid) for pid in _with_descendants(self.pid))


def proc_file(pid: int, name: str) -> str:
    """``/proc/PID/NAME``; empty when the process is gone."""
    try:
        with open(f"/proc/{pid}/{name}") as file:
            return file.read()
    except FileNotFoundError:
        return ""


def children(pid: int) -> list[int]:
    """Process ``pid``'s children (none when it is gone)."""
    return [int(child) for child in proc_file(pid, f"task/{pid}/children").split()]


def _with_descendants(pid: int) -> list[int]:
    found = [pid]
    for child in children(pid):
        found += _with_descendants(child)
    return found


def _cpu_seconds(pid: int) -> float:
    fields = proc_file(pid, "stat").rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def _rss_bytes(pid: int) -> int:
    lines = [line for line in proc_file(pid, "status").splitlines() if line.startswith("VmRSS:")]
    return int(lines[0].split()[1]) * 1024 if lines else 0


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0  # gone meanwhile


def _wait_until(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in {timeout:g} s")
        time.sleep(0.1)


@contextmanager
def running(
    command: list[str],
    ready_url: str,
    base_url: str,
    timeout: float,
    wrapped: bool = False,
    cpus: frozenset[int] | None = None,
    stderr: IO[bytes] | None = None,
) -> Iterator[Process]:
    """Start ``command`` in its own process group (bound to ``cpus`` when given, its log lines to ``stderr``
    when given); stop the whole group with SIGINT (a profiler wrapping the server then writes its
    profile), SIGKILL if it lingers."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bind = None if cpus is None else functools.partial(os.sched_setaffinity, 0, cpus)
    popen = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True, preexec_fn=bind
    )
    try:
        _wait_until(ready_url, popen, timeout)
        yield Process(popen, base_url, wrapped)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGINT)
        try:
            popen.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()


@contextmanager
def fake_upstream_process(tokens: int, token_interval: float = 0.0, model: str = "fake-model") -> Iterator[Process]:
    """``python -m lab.fakes.fake_upstream`` on a free port."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    module = [sys.executable, "-m", "lab.fakes.fake_upstream", "--port", str(port), "--model", model]
    command = [*module, "--tokens", str(tokens), "--token-interval", str(token_interval)]
    with running(command, f"{base}/models", base, timeout=30) as process:
        yield process


def py_spy() -> str | None:
    """The py-spy executable: on PATH, or beside this Python (a virtualenv that was not activated)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


@contextmanager
def gateway_process(
    *flags: str,
    timeout: float = 120,
    profile: Path | None = None,
    cpus: frozenset[int] | None = None,
    stderr: IO[bytes] | None = None,
) -> Iterator[Process]:
    """``sinkwatch serve FLAGS`` on a free port, once ``/readyz`` answers 200; with ``profile``, under
    py-spy (:func:`py_spy`), which writes collapsed stacks of CPU samples there (worker processes' too)
    when the server stops; with ``cpus``, bound to those cores; its logs (warnings, unless ``FLAGS`` set
    ``--log-level``) to ``stderr`` when given."""
    port = free_port()
    command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--log-level", "warning", *flags]
    if profile is not None:
        sampler = [py_spy() or "py-spy", "record", "--format", "raw", "--rate", "250", "--subprocesses"]
        sampler += ["--output", str(profile)]
        command = [*sampler, "--", *command]
    ready, base = f"http://127.0.0.1:{port}/readyz", f"http://127.0.0.1:{port}/v1"
    with running(command, ready, base, timeout, wrapped=profile is not None, cpus=cpus, stderr=stderr) as process:
        yield process
