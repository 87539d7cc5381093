"""Policies and how a request picks one: body extension, then header, then the server default."""

from dataclasses import dataclass
from enum import StrEnum

from gateway.errors import InvalidRequest
from monitors.verdict import Verdict

__all__ = ["POLICY_HEADER", "GateConfig", "Policy", "resolve_policy"]

POLICY_HEADER = "x-sinkwatch-policy"


class Policy(StrEnum):
    """``observe``: metrics only. ``annotate``: attach the report. ``block``: stop a collapsing generation.
    ``rescue``: roll back to the last stable token and resample with a change orthogonal to the failure."""

    OBSERVE = "observe"
    ANNOTATE = "annotate"
    BLOCK = "block"
    RESCUE = "rescue"

    @property
    def acts(self) -> bool:
        """True when the policy may change what the client receives."""
        return self in (Policy.BLOCK, Policy.RESCUE)


@dataclass(frozen=True)
class GateConfig:
    """Operator settings of the gate; ``block_at`` > 0 makes block and rescue act on ``stability.risk``
    reaching it rather than on the verdict."""

    def acts_on(self, verdict: Verdict) -> bool:
        """Whether block or rescue act on this verdict: risk at ``block_at`` when set (and the calibration
        has a risk model), else a collapse verdict."""
        if self.block_at > 0 and verdict.risk is not None:
            return verdict.risk >= self.block_at
        return verdict.fired

    default_policy: Policy = Policy.ANNOTATE
    allow_override: bool = True
    holdback_tokens: int = 3
    block_mode: str = "finish"
    block_at: float = 0.0
    rescue_attempts: int = 2
    rescue_token_budget: int = 256
    rescue_strategy: str = "ngram_bias"


def resolve_policy(config: GateConfig, body_policy: str | None, header_policy: str | None) -> Policy:
    """The policy of one request: ``sinkwatch.policy`` in the body, else the header, else the default."""
    requested = body_policy or header_policy
    if requested is None or not config.allow_override:
        return config.default_policy
    try:
        return Policy(requested.strip().lower())
    except ValueError:
        choices = ", ".join(p.value for p in Policy)
        param = "sinkwatch.policy" if body_policy else POLICY_HEADER
        raise InvalidRequest(f"unknown policy {requested!r}; choose one of {choices}", param=param) from None
