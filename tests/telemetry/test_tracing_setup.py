"""When tracing is on: only when the ``OTEL_*`` environment asks; a typo stops the gateway with a clear
message; off, the OpenTelemetry SDK is never imported."""

import os
import subprocess
import sys

import pytest

from gateway.telemetry.tracing import exporter_names
from lab.fakes.processes import free_port

PROXY = ["serve", "--backend", "openai", "--upstreams", "http://127.0.0.1:9/v1"]


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "gw"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ],
)
def test_tracing_is_on_only_when_the_environment_asks(environ, names):
    assert exporter_names(environ) == names


def test_an_unknown_exporter_stops_the_gateway_with_the_variable_named():
    environ = {**os.environ, "OTEL_TRACES_EXPORTER": "jaegr"}
    command = [sys.executable, "-m", "gateway.cli", *PROXY, "--port", str(free_port())]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "OTEL_TRACES_EXPORTER: unknown exporter 'jaegr'" in done.stderr


def test_an_unsupported_otlp_protocol_is_refused():
    with pytest.raises(ValueError, match="http/json"):
        from gateway.telemetry.tracing import configure

        configure({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_without_tracing_a_gateway_never_imports_the_sdk():
    """FastAPI imports OpenTelemetry's API (a few light modules) itself; the SDK and the exporters, with
    protobuf and requests, stay out."""
    heavy = ("opentelemetry.sdk", "opentelemetry.exporter", "google.protobuf", "requests")
    script = (
        "import os, sys; from gateway.app import create_app; from gateway.config import Settings; "
        "from gateway.telemetry import tracing; "
        "assert not tracing.configure(os.environ); "
        "create_app(Settings(backend='openai', upstreams='http://127.0.0.1:9/v1')); "
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    environ = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    loaded = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"
