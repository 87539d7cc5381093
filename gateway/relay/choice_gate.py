"""One choice of a relayed answer as the gate sees it: its monitor, its hold-back and what it covered.

The upstream's fragments of the choice (each kind of delta: content, reasoning, tool-call arguments) are
held as they are; a fragment is released once the tokens before it are released by the choice's
:class:`~gateway.gate.holdback.HoldBack`, which is exactly the embedded gate's rule (old enough, vouched
for by the detector, outside a repetitive stretch). When a collapse verdict fires under ``block`` or
``rescue`` the fragments not yet released are dropped, whatever kind of delta they carry.
"""

from collections import Counter
from dataclasses import dataclass, field

from gateway.gate.controller import Attempt
from gateway.gate.holdback import HoldBack, stable_prefix, token_ids
from gateway.gate.monitor import RequestMonitor
from gateway.relay.seam import ChoiceToken, Fragment
from monitors.verdict import Verdict

__all__ = ["ChoiceGate"]


@dataclass
class _Held:
    tokens_before: int
    fragment: Fragment


@dataclass
class ChoiceGate:
    """One attempt of one choice: feed it tokens and fragments in the upstream's order, take what may go out.

    ``lag`` is the hold-back in tokens: 0 releases at once (nothing can act), None holds the whole choice
    (a whole answer, or a stream under ``rescue`` whose choices are resampled from their start).
    ``prefix``: the accepted tokens a continuation resumes after (released already; positions count from
    the start of the choice, as the primed monitor's verdicts do).
    """

    monitor: RequestMonitor | None
    gated: bool
    lag: int | None
    attempt: Attempt
    prefix: list[int] = field(default_factory=list)
    covered: Counter = field(default_factory=Counter)
    fired: Verdict | None = None
    leaked: int = 0
    sent_text: str = ""  # the content of the fragments released so far
    _holdback: HoldBack = field(init=False)
    _held: list[_Held] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._holdback = HoldBack(self.lag if self.gated else 0)
        for token_id in self.prefix:
            self._holdback.add("", token_id)
        self._holdback.release_upto(len(self.prefix))

    def add_token(self, token: ChoiceToken) -> None:
        """A generated token of the choice; the monitor sees it when it has features."""
        if self.fired is not None:
            return
        self._holdback.add(token.token.text, token.token.token_id)
        self.attempt.generated += 1
        self.covered[token.kind] += 1
        features = token.token.features
        if self.monitor is not None and features is not None:
            verdict = self.monitor.observe(features)
            if self.gated and verdict.fired:
                self._fire(verdict)

    def add_fragment(self, fragment: Fragment) -> None:
        """An upstream fragment of the choice, after the tokens it carries."""
        if self.fired is None:
            self._held.append(_Held(len(self._holdback), fragment))

    def releasable(self) -> list[Fragment]:
        """The held fragments whose tokens the hold-back releases now (none once a verdict fired)."""
        if self.fired is not None:
            return []
        if self.gated:
            self._holdback.release(stable_prefix(self.monitor.verdict))
        else:
            self._holdback.release_upto(len(self._holdback))
        return self._take(self._holdback.released)

    def finish(self) -> list[Fragment]:
        """The choice ended without firing: everything held."""
        if self.fired is not None:
            return []
        self._holdback.release_upto(len(self._holdback))
        self.settle()
        return self._take(len(self._holdback) + 1)

    def settle(self) -> None:
        """Note the attempt's outcome (again, when tokens came after the choice's end: ungated streams)."""
        if self.fired is None:
            self.attempt.kept = self.attempt.generated
        self._note_verdict()

    def _take(self, released_tokens: int) -> list[Fragment]:
        ready = 0
        while ready < len(self._held) and self._held[ready].tokens_before <= released_tokens:
            ready += 1
        out, self._held = [held.fragment for held in self._held[:ready]], self._held[ready:]
        self.sent_text += "".join(_content(fragment.choice) for fragment in out)
        return out

    def _fire(self, verdict: Verdict) -> None:
        """Note where to cut: the detector's stable point, never before what was already released."""
        self.fired = verdict
        attempt = self.attempt
        attempt.fired_at = verdict.token_index
        cut, self.leaked = self._holdback.cut_for(verdict, floor=len(self.prefix))
        attempt.rollback_to = cut
        attempt.kept = self._holdback.released - len(self.prefix)
        self._note_verdict()

    def cut(self) -> list[Fragment]:
        """After a block: the held fragments before the cut (the detector vouched for them); the rest is
        dropped. Nothing is released when the choice is resampled instead."""
        if self.fired is None or self.lag is None:
            self._held = []
            return []
        self._holdback.release_upto(self.attempt.rollback_to)
        self.attempt.kept = self._holdback.released - len(self.prefix)
        out = self._take(self._holdback.released)
        self._held = []
        return out

    def _note_verdict(self) -> None:
        if self.monitor is not None and self.monitor.tokens:
            self.attempt.verdict = self.monitor.verdict.level

    @property
    def released_anything(self) -> bool:
        """Whether any generated token of this attempt reached the client."""
        return self._holdback.released > 0

    @property
    def withheld(self) -> int:
        """Generated tokens of this attempt that never reached the client."""
        return len(self._holdback) - self._holdback.released

    @property
    def token_ids(self) -> list[int]:
        """The choice's token ids so far: the prefix, then this attempt's."""
        return token_ids(self._holdback.slots)


def _content(choice: dict) -> str:
    """The content a chunk's choice carries (chat delta or completion text)."""
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return text if isinstance(text, str) else ""
