"""Failed API-key attempts throttled per client address: a brute force gets 429s, not more guesses.

An address that fails authentication ``limit`` times within ``window`` seconds is refused (429, every
request, whatever key it presents: answering a right key differently would still let the guessing go on)
until that window ends. The table of addresses is bounded: past ``MAX_ADDRESSES`` the address seen least
recently is forgotten, so a flood of new addresses costs bounded memory (and each of them only its own
failures).
"""

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["MAX_ADDRESSES", "AuthThrottle"]

# Addresses remembered at once (a few hundred bytes each).
MAX_ADDRESSES = 10_000


class AuthThrottle:
    """Per-address failure counts over fixed windows; ``limit`` 0 turns it off."""

    def __init__(
        self,
        limit: int,
        window: float,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()  # address -> (window start, count)

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def wait(self, address: str) -> float:
        """Seconds until ``address`` may try again: 0 unless it failed ``limit`` times in its current window."""
        entry = self._failures.get(address)
        if entry is None:
            return 0.0
        started, count = entry
        left = started + self.window - self._clock()
        if left <= 0:
            del self._failures[address]
            return 0.0
        return left if count >= self.limit else 0.0

    def failed(self, address: str) -> None:
        """Count a failed attempt from ``address``."""
        now = self._clock()
        started, count = self._failures.pop(address, (now, 0))
        if now - started >= self.window:
            started, count = now, 0
        self._failures[address] = (started, count + 1)
        while len(self._failures) > self._max_addresses:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)
