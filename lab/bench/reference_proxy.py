"""A reference proxy for ``sinkwatch bench proxy``: nginx in front of the same fake upstream.

The saturation ratio (proxied rate / direct rate) charges the gateway with everything an extra hop
costs, its own code and more: on a small machine, the load generator and the fake upstream do less work
per wake-up when a proxy sits between them, so they serve fewer answers per second on their core whatever
the proxy costs (docs/BENCHMARKS.md). nginx, a C proxy, measured in the same run, on the gateway's cores,
with one worker and keep-alive upstream connections, shows how much of the gap any proxy has on the host.
"""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from lab.fakes.processes import Process, free_port, running

__all__ = ["NGINX_INSTALL_HINT", "nginx", "nginx_process", "nginx_version"]

NGINX_INSTALL_HINT = "apt-get install nginx"

_CONFIG = """\
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  upstream fake {{ server {upstream}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{port} backlog=2048;
    location / {{
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def nginx() -> str | None:
    """The nginx executable: on PATH, or where Debian puts it (``/usr/sbin``, off a normal user's PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


def nginx_config(workdir: Path, upstream_base: str, port: int) -> str:
    """nginx's configuration: one worker on 127.0.0.1:``port``, relaying every path to the upstream."""
    return _CONFIG.format(workdir=workdir, upstream=urlsplit(upstream_base).netloc, port=port)


def nginx_version(executable: str) -> str:
    """``nginx/1.22.1``: what ``nginx -v`` prints (on stderr)."""
    printed = subprocess.run([executable, "-v"], capture_output=True, text=True, check=True).stderr
    return printed.strip().removeprefix("nginx version: ")


@contextmanager
def nginx_process(executable: str, upstream_base: str, cpus: frozenset[int] | None = None) -> Iterator[Process]:
    """nginx (``executable``) in front of ``upstream_base`` (``http://host:port/v1``), ready once it relays
    ``/models``, bound to ``cpus`` when given.

    Its :class:`Process` stands for the worker (the child of nginx's master process), which does the
    relaying, so that ``cpu_seconds()`` counts the worker's time.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}{urlsplit(upstream_base).path}"
    with tempfile.TemporaryDirectory(prefix="sinkwatch-nginx-") as workdir:
        os.chmod(workdir, 0o755)  # a worker started by root runs as nobody
        config = Path(workdir) / "nginx.conf"
        config.write_text(nginx_config(Path(workdir), upstream_base, port))
        command = [executable, "-p", workdir, "-e", f"{workdir}/error.log", "-c", str(config)]
        with running(command, f"{base}/models", base, timeout=30, wrapped=True, cpus=cpus) as process:
            yield process
