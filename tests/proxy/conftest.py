"""Async proxy tests (``pytest.mark.anyio``) run on asyncio, the loop the gateway serves with."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
