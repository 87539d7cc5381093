"""Text-level signals on generated token ids: the baselines hidden-state signals must beat."""

from collections import deque

__all__ = ["RepetitionTracker", "text_sink_onset"]


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
