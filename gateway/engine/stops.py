"""Stop strings found as text streams in, in time linear in the text: one KMP automaton per stop string.

Each automaton's state is the length of the longest suffix of the text so far that is a prefix of its stop
string, so a stop is found the moment its last character arrives, and the text that could still become a
stop (the largest state) is known without looking back. Every character costs amortised constant time per
stop string, whatever its length; the tables cost the stop strings' length once per request.
"""

from collections.abc import Sequence

__all__ = ["StopMatcher"]


def _failure(pattern: str) -> list[int]:
    """KMP failure table: for each prefix length ``k``, the longest proper border of ``pattern[:k]``."""
    table = [0] * (len(pattern) + 1)
    border = 0
    for i in range(1, len(pattern)):
        while border and pattern[i] != pattern[border]:
            border = table[border]
        if pattern[i] == pattern[border]:
            border += 1
        table[i + 1] = border
    return table


class StopMatcher:
    """Feeds text to every stop string's automaton; says where the first stop begins and what to hold back."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._tables = [_failure(s) for s in self._stops]
        self._states = [0] * len(self._stops)

    def __bool__(self) -> bool:
        return bool(self._stops)

    @property
    def held(self) -> int:
        """Characters at the end of the text fed so far that may still begin a stop string."""
        return max(self._states, default=0)

    def feed(self, text: str) -> int | None:
        """Advance over ``text``; the index in ``text`` where the earliest-starting completed stop begins (it
        may be negative: the stop began in text fed before, at most :attr:`held` characters back), or None."""
        found: int | None = None
        for n, (stop, table) in enumerate(zip(self._stops, self._tables, strict=True)):
            state = self._states[n]
            for i, char in enumerate(text):
                while state and char != stop[state]:
                    state = table[state]
                if char == stop[state]:
                    state += 1
                if state == len(stop):
                    start = i + 1 - len(stop)
                    found = start if found is None else min(found, start)
                    state = table[state]
                    break
            self._states[n] = state
        return found
