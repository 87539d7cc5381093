"""The ``sinkwatch`` command line: what a gateway process imports, and every command still reachable."""

import subprocess
import sys

import pytest

from gateway.cli import COMMAND_GROUPS, build_parser


def test_a_proxy_gateway_does_not_load_torch():
    """A worker or a proxying gateway holds no model: torch (hundreds of MiB) stays out of its process."""
    script = (
        "import sys; from gateway.cli import build_parser; from gateway.app import create_app; "
        "from gateway.config import Settings; "
        "build_parser('serve').parse_args(['serve', '--backend', 'openai']); "
        "create_app(Settings(backend='openai', upstreams='http://127.0.0.1:9/v1')); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize("group", sorted(COMMAND_GROUPS))
def test_every_member_of_a_group_parses_when_its_group_is_run(group):
    for member in COMMAND_GROUPS[group][1]:
        args = build_parser(group).parse_args([group, member])
        assert args.handler is not None


def test_calibrate_parses_when_run():
    assert build_parser("calibrate").parse_args(["calibrate"]).handler is not None
