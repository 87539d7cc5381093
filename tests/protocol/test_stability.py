"""The ``stability`` report of an answer with several choices: the top level is the worst choice's."""

from gateway.protocol.stability import StabilityReport, worst_of


def _report(verdict: str, onset: int | None = None) -> StabilityReport:
    return StabilityReport(verdict=verdict, onset_token=onset)


def test_the_top_level_report_is_the_worst_choices_and_names_it() -> None:
    summary = worst_of([_report("ok"), _report("sink", 40), _report("warn", 3)])
    assert (summary.verdict, summary.choice, summary.onset_token) == ("sink", 1, 40)


def test_among_equally_bad_choices_the_earliest_onset_wins() -> None:
    summary = worst_of([_report("sink", 40), _report("rank_exhaustion", 12), _report("sink", None)])
    assert (summary.verdict, summary.choice) == ("rank_exhaustion", 1)


def test_a_verdict_that_judges_nothing_ranks_below_ok() -> None:
    summary = worst_of([_report("unmonitored"), _report("ok")])
    assert (summary.verdict, summary.choice) == ("ok", 1)


def test_the_choices_own_reports_are_left_unchanged() -> None:
    reports = [_report("ok"), _report("warn", 5)]
    worst_of(reports)
    assert [r.choice for r in reports] == [None, None]


def test_a_single_choice_report_carries_no_choice_field() -> None:
    assert "choice" not in _report("ok").model_dump()
    assert worst_of([_report("ok"), _report("ok")]).model_dump()["choice"] == 0
