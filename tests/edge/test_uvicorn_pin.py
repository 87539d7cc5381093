"""The edge protocol relies on uvicorn's internals: the installed uvicorn is the pinned one, and has them."""

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def _pinned(name: str) -> Requirement:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return next(Requirement(line) for line in dependencies if Requirement(line).name == name)


def test_uvicorn_is_pinned_to_one_minor_version_and_installed_within_it():
    requirement = _pinned("uvicorn")
    upper = [spec for spec in requirement.specifier if spec.operator == "<"]
    assert upper, "uvicorn needs an upper bound: the edge protocol uses its internals"
    assert requirement.specifier.contains(version("uvicorn"))
    assert _pinned("httptools").specifier.contains(version("httptools"))


def test_the_protocol_internals_the_edge_uses_are_there():
    for name in (
        "on_headers_complete",
        "on_body",
        "on_message_complete",
        "on_response_complete",
        "send_400_response",
        "_should_upgrade",
        "_unsupported_upgrade_warning",
        "timeout_keep_alive_handler",
    ):
        assert callable(getattr(HttpToolsProtocol, name)), name
    cycle_fields = RequestResponseCycle.__init__.__code__.co_names
    for name in ("disconnected", "message_event", "response_started", "response_complete", "keep_alive"):
        assert name in cycle_fields, name
