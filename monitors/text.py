"""Text-level signals on generated token ids: the served loop signal and the baselines it replaced.

:class:`PeriodicityTracker` is the served text signal (``text.periodicity``): a loop is a stretch that
recurs with a period, so it measures how much of the recent text repeats the text one period earlier, at
the best period. :class:`RepetitionTracker` (the share of tokens closing a repeated 4-gram) stays as the
baseline the evaluation compares with: in healthy text that share grows with length, because repeated
code lines, list bullets, table rows and reused phrases all close repeated 4-grams.
"""

from collections import deque

import numpy as np

__all__ = [
    "MAX_PERIOD",
    "PERIODICITY_WINDOW",
    "PERIOD_JITTER",
    "ROLLBACK_PERIOD",
    "PeriodicityTracker",
    "RepetitionTracker",
    "periodicity_trajectory",
    "text_sink_onset",
]

PERIODICITY_WINDOW = 16
# Paragraph-sized loops of long answers recur with periods of 70-250 tokens; chosen with the jitter on the
# tune split, out of fold (``sinkwatch eval periodicity``, docs/EVALUATION.md).
MAX_PERIOD = 128
# The longest period whose loop is rolled back to its second occurrence; a longer loop is rolled back to its
# third, so that the hold-back covering a rollback stays this many tokens long whatever period is detected.
ROLLBACK_PERIOD = 64
# How far (tokens) a loop's period may change from one occurrence to the next (a paraphrase adds a word).
PERIOD_JITTER = 2
# Mismatches in a row that end a periodic run (a near loop changes a token or two per period: a counter).
RUN_BREAK = 3


class PeriodicityTracker:
    """Share of the last ``window`` tokens equal to the tokens one and two periods earlier, at the best period.

    For every lag ``p`` up to ``max_period`` it counts, over the last ``window`` tokens, the positions
    where ``x[t] == x[t - p] == x[t - p - q]`` for some ``q`` within ``jitter`` of ``p`` (``jitter`` 0:
    ``x[t - 2p]``); the value is the largest count divided by ``window``. A loop is a stretch that recurs
    contiguously, so from its third occurrence on it drives the value to 1 within ``window`` tokens,
    whatever the period (a near loop, such as a counter with the same text around it, stays close to 1).
    Healthy text that repeats itself does so differently: structure repeats only its scaffolding (code
    lines, bullets, table rows: the same punctuation around new content), and a phrase, URL or formula
    used again occurs twice, not three times in a row. It also tracks where the current loop began
    repeating, at the best period (``stretch_start``) and at the earliest of all periods under way
    (``earliest_stretch_start``: the best period can change as a loop builds up, and a hold-back must not
    release what any of them could roll back). That is the start of the loop's second occurrence (a rescue
    keeps the first) for periods up to ``rollback_period``, and the start of its third for longer ones: a
    rollback point at most ``rollback_period`` tokens before the run is seen.
    """

    def __init__(
        self,
        window: int = PERIODICITY_WINDOW,
        max_period: int = MAX_PERIOD,
        jitter: int = PERIOD_JITTER,
        rollback_period: int = ROLLBACK_PERIOD,
    ) -> None:
        self.window = window
        self.max_period = max_period
        self.jitter = jitter
        # The last tokens, a ring buffer indexed by token position (as long as the furthest look back).
        self._history = np.zeros(2 * max_period + jitter, dtype=np.int64)
        self._matches: deque[np.ndarray] = deque(maxlen=window)
        self._counts = np.zeros(max_period, dtype=np.int64)
        self._misses = np.full(max_period, RUN_BREAK, dtype=np.int64)
        self._run_start = np.full(max_period, -1, dtype=np.int64)
        self._lags = np.arange(1, max_period + 1)
        # Per period shift (rows) and lag: how far back the occurrence before the previous one lies.
        shifts = np.arange(-jitter, jitter + 1)[:, None]
        self._back = 2 * self._lags + shifts
        self._back_valid = self._lags + shifts >= 1
        # How far before its run each lag's rollback point lies: one period, or none past rollback_period.
        self._rollback = np.where(self._lags <= rollback_period, self._lags, 0)
        self._index = -1
        self.stretch_start: int | None = None
        self.earliest_stretch_start: int | None = None

    def _match(self, token_id: int) -> np.ndarray:
        """Per lag: does ``token_id`` repeat the token one period back and the one a period (± jitter) before?"""
        seen = min(self._index, len(self._history))
        once = self._history[(self._index - self._lags) % len(self._history)] == token_id
        twice = self._history[(self._index - self._back) % len(self._history)] == token_id
        return once & (self._lags <= seen) & (twice & self._back_valid & (self._back <= seen)).any(axis=0)

    def push(self, token_id: int) -> float:
        """Add a token; return the best lag's share of recent tokens that repeat two periods back."""
        self._index += 1
        match = self._match(token_id)
        if len(self._matches) == self.window:
            self._counts -= self._matches[0]
        self._matches.append(match)
        self._counts += match
        self._history[self._index % len(self._history)] = token_id
        self._misses = np.where(match, 0, self._misses + 1)
        self._run_start = np.where(self._misses >= RUN_BREAK, -1, self._run_start)
        self._run_start = np.where(match & (self._run_start < 0), self._index, self._run_start)
        best = int(np.argmax(self._counts))
        start = int(self._run_start[best])
        # The run starts at the loop's third occurrence; the loop started repeating one period earlier.
        self.stretch_start = max(start - int(self._rollback[best]), 0) if self._counts[best] and start >= 0 else None
        alive = (self._run_start >= 0) & (self._counts > 0)
        starts = self._run_start[alive] - self._rollback[alive]
        self.earliest_stretch_start = max(int(starts.min()), 0) if len(starts) else None
        return float(self._counts[best]) / self.window


def periodicity_trajectory(token_ids: list[int], **options: int) -> np.ndarray:
    """The periodicity signal after every token (``options``: those of :class:`PeriodicityTracker`)."""
    tracker = PeriodicityTracker(**options)
    return np.array([tracker.push(t) for t in token_ids], dtype=np.float64)


class RepetitionTracker:
    """Fraction of the last ``window`` tokens that close an n-gram already seen in this generation.

    The online text detector of METRICS.md: it fires when at least half of the last 16 tokens close a
    repeated 4-gram. It also tracks where the current repetitive stretch began (the first token of its
    first repeated n-gram), which is where a loop's second occurrence starts.
    """

    def __init__(self, n: int = 4, window: int = 16) -> None:
        self.n = n
        self.window = window
        self._tokens: list[int] = []
        self._seen: set[tuple[int, ...]] = set()
        self._recent: deque[bool] = deque(maxlen=window)
        self._last_repeat: int | None = None
        self.stretch_start: int | None = None

    def push(self, token_id: int) -> float:
        """Add a token; return the repeated fraction over the recent window."""
        self._tokens.append(token_id)
        index = len(self._tokens) - 1
        repeated = False
        if len(self._tokens) >= self.n:
            gram = tuple(self._tokens[-self.n :])
            repeated = gram in self._seen
            self._seen.add(gram)
        if repeated:
            if self._last_repeat is None or index - self._last_repeat > self.window:
                self.stretch_start = index - self.n + 1
            self._last_repeat = index
        elif self._last_repeat is not None and index - self._last_repeat > self.window:
            self.stretch_start = None
        self._recent.append(repeated)
        return sum(self._recent) / self.window


SINK_FRACTION = 0.5


def text_sink_onset(token_ids: list[int], n: int = 4, window: int = 16) -> int | None:
    """Token index at which the online text detector fires (at least half of the last ``window`` tokens
    close a repeated ``n``-gram), or None if it never does. The text-level ground truth for loops."""
    tracker = RepetitionTracker(n, window)
    for index, token_id in enumerate(token_ids):
        if tracker.push(token_id) >= SINK_FRACTION:
            return index
    return None
