"""A request that fails unexpectedly is answered by Starlette's last-resort handler, outside the
middleware that stamps every other response: its 500 still carries the request id, and its access line
says 500."""

import logging

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings


async def _boom() -> None:
    raise RuntimeError("a bug")


@pytest.mark.anyio
async def test_an_unexpected_error_keeps_its_request_id_and_is_logged_as_500(caplog):
    app = create_app(Settings(backend="openai", upstreams="http://127.0.0.1:9/v1"))
    app.add_api_route("/v1/boom", _boom, methods=["GET"])
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    with caplog.at_level(logging.INFO):
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            response = await client.get("/v1/boom", headers={"x-request-id": "boom-1"})
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert response.headers["x-request-id"] == "boom-1"
    (access,) = [record for record in caplog.records if record.name == "sinkwatch.access"]
    assert access.fields["status"] == 500 and access.fields["route"] == "/v1/boom"
