"""What the detector vouches for, what the hold-back releases, and where a fired verdict cuts."""

from dataclasses import replace

import pytest

from gateway.gate.holdback import HoldBack, required_lag, stable_prefix
from monitors.calibration import load_calibration
from monitors.text import MAX_PERIOD, ROLLBACK_PERIOD, PeriodicityTracker
from monitors.verdict import Reason, Verdict, VerdictLevel


def _reason(since: int) -> Reason:
    return Reason("entropy", 0.1, 0.3, "low", since)


def _filled(lag: int | None, ids: list[int]) -> HoldBack:
    buffer = HoldBack(lag)
    for token in ids:
        buffer.add(f"<{token}>", token)
    return buffer


def test_nothing_is_vouched_for_before_the_first_verdict():
    assert stable_prefix(None) == 0
    assert stable_prefix(Verdict(VerdictLevel.OK, -1)) == 0


def test_a_calm_detector_vouches_up_to_its_last_stable_token():
    assert stable_prefix(Verdict(VerdictLevel.OK, 9, last_stable_token=9)) == 10


def test_a_crossing_disowns_everything_from_where_it_began():
    verdict = Verdict(VerdictLevel.SINK, 20, reasons=(_reason(12), _reason(15)), last_stable_token=17)
    assert stable_prefix(verdict) == 12


def test_release_trails_generation_by_the_lag_and_never_passes_the_vouched_point():
    buffer = _filled(3, list(range(10)))
    assert buffer.release(vouched=100) == "".join(f"<{i}>" for i in range(7))
    buffer.add("<10>", 10)
    assert buffer.release(vouched=7) == ""
    assert buffer.release(vouched=8) == "<7>"


def test_holding_everything_releases_nothing_until_asked():
    buffer = _filled(None, list(range(10)))
    assert buffer.release(vouched=10) == ""
    assert buffer.release_upto(10) == "".join(f"<{i}>" for i in range(10))


def test_a_repetitive_stretch_is_not_released_while_under_way():
    buffer = _filled(0, [1, 2, 3, 4, 5, 6, 4, 5, 6, 4, 5])
    # (4, 5, 6, 4) repeats from index 6 on: the stretch starts there
    assert buffer.release(vouched=100) == "<1><2><3><4><5><6>"


def test_text_without_a_token_id_belongs_to_the_previous_token():
    buffer = _filled(0, [1, 2])
    buffer.add("tail", None)
    assert len(buffer) == 2 and buffer.text() == "<1><2>tail"


def test_the_cut_respects_what_was_sent_and_counts_what_leaked():
    buffer = _filled(0, list(range(20)))
    buffer.release_upto(8)
    fired = Verdict(VerdictLevel.SINK, 19, reasons=(_reason(12),), last_stable_token=14)
    assert buffer.cut_for(fired, floor=0) == (12, 0)
    early = Verdict(VerdictLevel.SINK, 19, reasons=(_reason(5),), last_stable_token=14)
    assert buffer.cut_for(early, floor=0) == (8, 3)
    assert buffer.cut_for(early, floor=10) == (10, 0)


def test_released_tokens_cannot_be_rolled_back():
    buffer = _filled(0, list(range(5)))
    buffer.release_upto(3)
    with pytest.raises(ValueError):
        buffer.truncate(2)
    assert [slot.token_id for slot in buffer.truncate(4)] == [4]


def test_the_automatic_lag_covers_the_slowest_signal_and_a_loop_period():
    shipped = load_calibration("SmolLM2-135M-Instruct")
    slow = replace(shipped, signals=(replace(shipped.signals[0], persistence=99), *shipped.signals[1:]))
    assert required_lag(replace(shipped, persistence=2, signals=())) == ROLLBACK_PERIOD + 1
    assert required_lag(slow) == 99 - 1


def _near_loop(period: int, repeats: int) -> list[int]:
    """Fresh text, then a loop of ``period`` tokens whose every third token is the repetition's number: no
    4-gram of it ever repeats, so only its period shows it, and the number makes a second, shorter period
    that wins until the loop's own period has built up."""
    prose = list(range(1000, 1040))
    unit = [2000 + i for i in range(period)]
    loop = []
    for k in range(repeats):
        loop += [3000 + k if i % 3 == 0 else token for i, token in enumerate(unit)]
    return prose + loop


@pytest.mark.parametrize("period", [6, 21, 40, ROLLBACK_PERIOD, 100, MAX_PERIOD])
def test_nothing_a_loop_rollback_can_reach_is_released_under_the_automatic_lag(period):
    """The detector rolls a loop back to where its tracker says it began repeating; under the automatic lag
    no token from there on has been streamed at any point of the generation (a lag of 3 streamed up to a
    period of them). Loops longer than ``ROLLBACK_PERIOD`` are rolled back to their third occurrence, so
    the lag does not grow with the longest period detected."""
    buffer = HoldBack(required_lag(load_calibration("SmolLM2-135M-Instruct")))
    detector_view = PeriodicityTracker()
    for token in _near_loop(period, 5):
        buffer.add(f"<{token}>", token)
        detector_view.push(token)
        buffer.release(vouched=len(buffer))
        if detector_view.stretch_start is not None:
            assert buffer.released <= detector_view.stretch_start
    assert detector_view.stretch_start is not None
