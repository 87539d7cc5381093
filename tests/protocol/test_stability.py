"""The ``stability`` report of an answer with several choices: the top level is the worst choice's."""

from gateway.protocol.stability import GateReport, StabilityReport, worst_of


def _report(verdict: str, onset: int | None = None) -> StabilityReport:
    return StabilityReport(verdict=verdict, onset_token=onset)


def _gated(verdict: str, detected: str, outcome: str | None) -> StabilityReport:
    gate = GateReport(
        action="rescue" if outcome == "rescued" else "pass", outcome=outcome, detected=detected, holdback_tokens=3
    )
    return StabilityReport(verdict=verdict, gate=gate, policy="rescue")


def test_a_rescued_choice_outranks_one_that_stayed_ok_though_its_final_verdict_is_ok() -> None:
    summary = worst_of([_gated("ok", "ok", None), _gated("ok", "sink", "rescued")])
    assert (summary.choice, summary.gate.outcome) == (1, "rescued")


def test_a_blocked_choice_outranks_a_rescued_one_that_saw_the_same_verdict() -> None:
    reports = [_gated("ok", "sink", "rescued"), _gated("sink", "sink", "rescue_failed"), _gated("warn", "warn", None)]
    assert worst_of(reports).choice == 1


def test_what_an_attempt_saw_counts_before_what_the_gate_did() -> None:
    summary = worst_of([_gated("ok", "warn", "rescued"), _gated("sink", "sink", None)])
    assert summary.choice == 1


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
