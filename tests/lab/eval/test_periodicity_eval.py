"""Choosing the periodicity tracker: most loops out of fold, never more out-of-fold false alarms than the
served one, then the earliest onset, then the cheapest."""

from lab.eval.periodicity_eval import choose
from lab.eval.periodicity_variants import Variant


def _result(period: int, alarms: int, caught: int, lead: float | None, speed: int) -> dict:
    stats = {"false_alarms": alarms, "loops_caught": caught, "median_lead_over_text_detector": lead}
    variant = Variant(period, 0, 16).options()
    return {"variant": variant, "tokens_per_second": speed, "selection": {"out_of_fold": stats}}


def test_more_loops_win_only_without_more_false_alarms():
    served = _result(64, 1, 30, -13, 1000)
    noisy = _result(128, 2, 40, -5, 1000)
    better = _result(256, 1, 33, -20, 500)
    assert choose([served, noisy, better], served) is better


def test_ties_go_to_the_earlier_then_the_cheaper_tracker():
    served = _result(64, 1, 30, -13, 1000)
    later = _result(128, 0, 30, -15, 2000)
    cheaper = _result(192, 1, 30, -13, 3000)
    assert choose([served, later, cheaper], served) is cheaper
    assert choose([served, later], served) is served
