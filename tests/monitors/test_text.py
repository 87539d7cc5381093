"""The periodicity signal: loops (verbatim or near, short or long period) score high; healthy structure
that repeats only its scaffolding (code lines, bullets, table rows) or repeats a stretch once (a reused
phrase, URL or formula) does not."""

import math

import numpy as np

from monitors.text import PERIODICITY_WINDOW, PeriodicityTracker, periodicity_trajectory, text_sink_onset

# Token ids standing for words: scaffolding (punctuation, keywords) is reused, content words are fresh.
NEWLINE, INDENT, DASH, PIPE, QUOTE, COLON, COMMA, EQUALS = 1, 2, 3, 4, 5, 6, 7, 8
fresh = iter(range(1000, 100000))


def words(n: int) -> list[int]:
    return [next(fresh) for _ in range(n)]


def test_a_verbatim_loop_reaches_one_whatever_its_period():
    for period in (1, 3, 17, 50):
        unit = words(period)
        trajectory = periodicity_trajectory(words(20) + unit * (3 + PERIODICITY_WINDOW // period))
        assert trajectory[-1] == 1.0, period


def test_a_near_loop_with_a_counter_stays_close_to_one():
    sentence = words(9)
    counters = words(20)
    ids = [token for i in range(12) for token in (counters[i], *sentence)]
    assert periodicity_trajectory(ids)[-1] >= 0.85


def test_fresh_text_scores_nothing():
    assert periodicity_trajectory(words(300)).max() == 0.0


def test_code_lines_bullets_and_table_rows_score_no_more_than_their_scaffolding():
    code = [t for _ in range(20) for t in (INDENT, next(fresh), EQUALS, next(fresh), next(fresh), NEWLINE)]
    bullets = [t for _ in range(20) for t in (DASH, *words(4), NEWLINE)]
    table = [t for _ in range(20) for t in (PIPE, next(fresh), PIPE, next(fresh), PIPE, next(fresh), PIPE, NEWLINE)]
    for ids, scaffolding, period in ((code, 3, 6), (bullets, 2, 6), (table, 5, 8)):
        # At most the scaffolding tokens of the rows the window overlaps.
        bound = scaffolding * math.ceil(PERIODICITY_WINDOW / period) / PERIODICITY_WINDOW
        assert periodicity_trajectory(ids).max() <= bound < 0.7


def test_a_stretch_used_twice_is_not_a_loop_however_long():
    for gap in (0, 20):
        stretch = words(40)  # a URL, a formula, a sentence restated once
        ids = words(30) + stretch + words(gap) + stretch + words(40)
        assert periodicity_trajectory(ids).max() == 0.0


def test_a_third_occurrence_makes_it_a_loop():
    unit = words(12)
    trajectory = periodicity_trajectory(words(10) + unit * 2 + words(6))
    assert trajectory.max() == 0
    trajectory = periodicity_trajectory(words(10) + unit * 3 + unit[:6])
    assert trajectory[-1] == 1.0


def test_healthy_structure_that_the_4gram_text_detector_calls_a_loop():
    # A key/value listing: every line closes repeated 4-grams (the old rule fires), but only the
    # scaffolding recurs one period later.
    ids = [t for _ in range(30) for t in (INDENT, QUOTE, COLON, QUOTE, next(fresh), QUOTE, COMMA, NEWLINE)]
    assert text_sink_onset(ids) is not None
    assert periodicity_trajectory(ids).max() < 0.9


def test_the_stretch_starts_at_the_loops_second_occurrence():
    prefix, unit = words(15), words(7)
    tracker = PeriodicityTracker()
    for token in prefix + unit * 6:
        tracker.push(token)
    # the three-way match starts at the third occurrence; the loop began repeating one period earlier
    assert tracker.stretch_start == len(prefix) + len(unit)


def test_values_are_shares_of_the_window():
    values = periodicity_trajectory(words(5) * 40)
    assert np.all((values >= 0) & (values <= 1))
    assert np.all(np.diff(values) >= 0) and values[-1] == 1.0


def test_a_paragraph_sized_loop_is_seen_only_by_a_tracker_that_looks_that_far_back():
    unit = words(150)
    ids = words(20) + unit * 3 + unit[:PERIODICITY_WINDOW]
    assert periodicity_trajectory(ids, max_period=64).max() < 0.5
    assert periodicity_trajectory(ids, max_period=160)[-1] == 1.0


def test_jitter_keeps_a_loop_whose_occurrences_differ_in_length():
    # A paraphrase adds a word to the second occurrence: its spacing to the first is one token longer
    # than to the third.
    unit, extra = words(20), words(1)
    ids = words(10) + unit + extra + unit + unit
    third_filled_window = 10 + 2 * len(unit) + 1 + PERIODICITY_WINDOW - 1
    assert periodicity_trajectory(ids, jitter=0)[third_filled_window] == 0.0
    assert periodicity_trajectory(ids, jitter=1)[third_filled_window] == 1.0


def test_jitter_does_not_turn_scaffolding_or_a_stretch_used_twice_into_a_loop():
    stretch = words(40)
    assert periodicity_trajectory(words(30) + stretch + words(1) + stretch + words(40), jitter=2).max() == 0.0
    bullets = [t for _ in range(20) for t in (DASH, *words(4), NEWLINE)]
    assert periodicity_trajectory(bullets, jitter=2).max() <= 2 * math.ceil(PERIODICITY_WINDOW / 6) / PERIODICITY_WINDOW


def test_a_loop_longer_than_the_rollback_period_is_rolled_back_to_its_third_occurrence():
    prefix, unit = words(15), words(100)
    tracker = PeriodicityTracker(max_period=128, rollback_period=64)
    for token in prefix + unit * 3 + unit[:20]:
        tracker.push(token)
    assert tracker.stretch_start == tracker.earliest_stretch_start == len(prefix) + 2 * len(unit)
    short = PeriodicityTracker(max_period=128, rollback_period=128)
    for token in prefix + unit * 3 + unit[:20]:
        short.push(token)
    assert short.stretch_start == len(prefix) + len(unit)
