"""The hold-back buffer: generated text reaches the client only behind generation and behind the detector.

A token is *released* (sent to the client) once it is ``lag`` tokens old, the detector vouches for it,
and it is not part of a repetitive stretch under way. The detector vouches for the tokens before its
stable point (:func:`stable_prefix`); when a collapse verdict fires, everything from that point on is
*blocked*: rolled back, never released.

Why that is enough: the detector reports a crossing only once it has lasted its signal's
``persistence``, so a crossing that starts at token ``s`` is first visible at ``s + persistence - 1``;
and when it fires it moves its stable point back to where the loop began repeating: the start of its
second occurrence (:class:`~monitors.text.PeriodicityTracker`), which is known only once the third
occurrence begins, one period (at most ``ROLLBACK_PERIOD`` tokens) later; a loop of a longer period is
rolled back to its third occurrence, which is known as it begins. Until then the stable point can run
ahead; a ``lag`` of :func:`required_lag` tokens keeps those tokens unsent, and afterwards the stable point
and the stretch holds (a repeated n-gram's, a periodic run's) hold releases themselves. Should a detector
ever disown tokens later than that,
:meth:`HoldBack.cut_for` clamps the rollback to what was sent and counts the difference as *leaked*,
so the breach is visible, never silent.
"""

from dataclasses import dataclass

from gateway.generation import TokenLogprobs
from monitors.calibration import Calibration
from monitors.text import ROLLBACK_PERIOD, PeriodicityTracker, RepetitionTracker
from monitors.verdict import Verdict, VerdictLevel

__all__ = ["HoldBack", "Slot", "required_lag", "stable_prefix", "token_ids"]


def required_lag(calibration: Calibration) -> int:
    """The least hold-back (tokens) under which no blocked token is ever released: a crossing is reported
    ``persistence - 1`` tokens after it began (the longest persistence of any signal), a repetitive stretch
    ``n - 1`` tokens after (its first repeated n-gram must close), and a loop's rollback point (the start of
    its second occurrence) one period after it, when the third occurrence begins: the periodic run is seen
    at its first token, so the lag must exceed the longest period rolled back that far (``ROLLBACK_PERIOD``;
    the detector rolls back there whichever signal fires, and loops of longer periods, which it also
    detects, to their third occurrence, so the lag does not grow with the periods it sees)."""
    persistence = max((spec.persistence or calibration.persistence for spec in calibration.signals), default=0)
    return max(persistence, RepetitionTracker().n, ROLLBACK_PERIOD + 2) - 1


def stable_prefix(verdict: Verdict | None) -> int:
    """How many leading tokens the detector vouches for.

    Those before the successor of its last stable token and, while it warns or has fired, before the
    first token of any crossing it reports. Nothing is vouched for before the first verdict.
    """
    if verdict is None or verdict.last_stable_token is None:
        return 0
    bound = verdict.last_stable_token + 1
    if verdict.level is not VerdictLevel.OK:
        bound = min([bound, *(reason.since_token for reason in verdict.reasons)])
    return max(bound, 0)


@dataclass(slots=True)
class Slot:
    """One generated token as the gate keeps it: its text (with any text that followed without an id) and
    its log-probabilities when the request asked for them."""

    text: str
    token_id: int | None
    logprobs: TokenLogprobs | None = None


def token_ids(slots: list[Slot]) -> list[int]:
    """The ids of the tokens behind ``slots``."""
    return [slot.token_id for slot in slots if slot.token_id is not None]


class HoldBack:
    """The completion so far, of which a prefix has been released; ``lag=None`` holds everything."""

    def __init__(self, lag: int | None) -> None:
        self.lag = lag
        self.slots: list[Slot] = []
        self.released = 0
        self._repetition = RepetitionTracker()
        self._periodicity = PeriodicityTracker()

    def __len__(self) -> int:
        return len(self.slots)

    def add(self, text: str, token_id: int | None, logprobs: TokenLogprobs | None = None) -> None:
        """Append a token (or, without an id, text belonging to the last token)."""
        if token_id is None and self.slots:
            self.slots[-1].text += text
            return
        self.slots.append(Slot(text, token_id, logprobs))
        if token_id is not None:
            self._repetition.push(token_id)
            self._periodicity.push(token_id)

    def release(self, vouched: int) -> str:
        """Text of the tokens that became old enough and are vouched for; empty while holding everything."""
        if self.lag is None:
            return ""
        starts = (self._repetition.stretch_start, self._periodicity.earliest_stretch_start)
        return self.release_upto(min(len(self.slots) - self.lag, vouched, *(s for s in starts if s is not None)))

    def release_upto(self, end: int) -> str:
        """Release every token before ``end`` (already released ones are not sent twice)."""
        end = min(end, len(self.slots))
        if end <= self.released:
            return ""
        text = "".join(slot.text for slot in self.slots[self.released : end])
        self.released = end
        return text

    def cut_for(self, verdict: Verdict, floor: int) -> tuple[int, int]:
        """Where to roll back after ``verdict`` fired, and how many of the blocked tokens had leaked.

        The cut is the detector's stable point, but never before ``floor`` (tokens accepted earlier) nor
        before what was already released.
        """
        stable = max(stable_prefix(verdict), floor)
        leaked = max(self.released - stable, 0)
        return min(max(stable, self.released), len(self.slots)), leaked

    def truncate(self, cut: int) -> list[Slot]:
        """Drop the tokens from ``cut`` on (never released ones) and return them."""
        if cut < self.released:
            raise ValueError(f"cannot roll back to {cut}: {self.released} tokens were already sent")
        dropped, self.slots = self.slots[cut:], self.slots[:cut]
        self._repetition, self._periodicity = RepetitionTracker(), PeriodicityTracker()
        for token_id in token_ids(self.slots):
            self._repetition.push(token_id)
            self._periodicity.push(token_id)
        return dropped

    def text(self, end: int | None = None) -> str:
        """The text of the first ``end`` tokens (all by default)."""
        return "".join(slot.text for slot in self.slots[:end])
