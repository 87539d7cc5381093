"""How a request picks its policy: body extension, then header, then the server default."""

import pytest

from gateway.errors import InvalidRequest
from gateway.gate.policy import POLICY_HEADER, GateConfig, Policy, resolve_policy

CONFIG = GateConfig(default_policy=Policy.ANNOTATE)


def test_the_server_default_applies_when_the_request_says_nothing():
    assert resolve_policy(CONFIG, None, None) is Policy.ANNOTATE


def test_the_body_wins_over_the_header():
    assert resolve_policy(CONFIG, "rescue", "block") is Policy.RESCUE
    assert resolve_policy(CONFIG, None, "Block ") is Policy.BLOCK


def test_overrides_can_be_disabled_by_the_operator():
    locked = GateConfig(default_policy=Policy.BLOCK, allow_override=False)
    assert resolve_policy(locked, "observe", "observe") is Policy.BLOCK


@pytest.mark.parametrize(("body", "header", "param"), [("panic", None, "sinkwatch.policy"), (None, "x", POLICY_HEADER)])
def test_an_unknown_policy_is_a_400_naming_where_it_came_from(body, header, param):
    with pytest.raises(InvalidRequest) as refused:
        resolve_policy(CONFIG, body, header)
    assert refused.value.status_code == 400 and refused.value.param == param


def test_only_block_and_rescue_act_on_the_answer():
    assert [p for p in Policy if p.acts] == [Policy.BLOCK, Policy.RESCUE]
