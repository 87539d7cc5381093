"""Text-level signals on generated token ids: the baselines hidden-state signals must beat."""

from collections import deque


class RepetitionTracker:
    """Fraction of the last ``window`` tokens that close an n-gram already seen in this generation.

    The online text detector of METRICS.md: it fires when at least half of the last 16 tokens close a
    repeated 4-gram.
    """

    def __init__(self, n: int = 4, window: int = 16) -> None:
        self.n = n
        self._tokens: list[int] = []
        self._seen: set[tuple[int, ...]] = set()
        self._recent: deque[bool] = deque(maxlen=window)

    def push(self, token_id: int) -> float:
        """Add a token; return the repeated fraction over the recent window."""
        self._tokens.append(token_id)
        repeated = False
        if len(self._tokens) >= self.n:
            gram = tuple(self._tokens[-self.n :])
            repeated = gram in self._seen
            self._seen.add(gram)
        self._recent.append(repeated)
        return sum(self._recent) / self._recent.maxlen
