"""A real gateway process configured only by ``OTEL_*`` variables exports its spans over OTLP/HTTP to a
receiver this test runs on loopback, which decodes them with ``opentelemetry-proto``: as they end, and
what is still queued when it stops (each worker's too)."""

import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from lab.fakes.fake_upstream import FakeUpstreamConfig, FakeUpstreamThread
from lab.fakes.processes import gateway_process
from tests.conftest import root, wait_for
from tests.upstreams import CHAT, FAKE_MODEL

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: what it was sent, decoded."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.exports: list[ExportTraceServiceRequest] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[tuple[dict, Span]]:
        """Every span received, with its resource's attributes."""
        return [
            (_attributes(resource_spans.resource.attributes), span)
            for export in self.exports
            for resource_spans in export.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path != "/v1/traces" or self.headers["content-type"] != "application/x-protobuf":
            self.send_error(404)
            return
        self.server.exports.append(ExportTraceServiceRequest.FromString(body))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


def _attributes(attributes) -> dict:
    values = {}
    for attribute in attributes:
        value = attribute.value
        kind = value.WhichOneof("value")
        values[attribute.key] = (
            [v.string_value for v in value.array_value.values] if kind == "array_value" else getattr(value, kind)
        )
    return values


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("flags", "exported"),
    [([], "as they end"), ([], "when stopped by SIGTERM"), (["--workers", "2"], "when stopped by SIGTERM")],
    ids=["as-they-end", "sigterm", "workers-sigterm"],
)
def test_a_gateway_configured_by_otel_variables_exports_its_spans_over_otlp(receiver, monkeypatch, flags, exported):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sinkwatch-otlp-test")
    delay_ms = "50" if exported == "as they end" else "600000"  # else nothing leaves before the stop
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", delay_ms)
    with (
        FakeUpstreamThread(FakeUpstreamConfig(tokens=4)) as upstream,
        gateway_process("--backend", "openai", "--upstreams", upstream.base_url, *flags) as gateway,
    ):
        headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
        response = httpx.post(f"{root(gateway)}/v1/chat/completions", json=CHAT, headers=headers, timeout=10)
        assert response.status_code == 200
        if exported == "as they end":
            wait_for(lambda: len(receiver.spans()) >= 2, timeout=15)
        else:
            assert receiver.spans() == []
            os.kill(gateway.pid, signal.SIGTERM)  # as Kubernetes stops a pod
            gateway.popen.wait(30)
    (resource, request), (_, call) = sorted(receiver.spans(), key=lambda found: found[1].kind)
    assert resource["service.name"] == "sinkwatch-otlp-test"
    assert (request.kind, call.kind) == (Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT)
    assert request.name == call.name == f"chat {FAKE_MODEL}"
    assert request.trace_id.hex() == call.trace_id.hex() == CLIENT_TRACE
    assert request.parent_span_id.hex() == CLIENT_SPAN and call.parent_span_id == request.span_id
    attributes = _attributes(request.attributes)
    assert attributes["gen_ai.request.model"] == FAKE_MODEL and attributes["gen_ai.usage.output_tokens"] == 4
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["sinkwatch.request_id"] == response.headers["x-request-id"]
    assert upstream.stats.traceparents == [f"00-{CLIENT_TRACE}-{call.span_id.hex()}-01"]
