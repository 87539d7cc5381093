"""Per-key request rate limits as token buckets, per process or shared by the processes of a server.

One step of the arithmetic, :func:`take_token`, serves both kinds of bucket. A :class:`TokenBucket` keeps
its two numbers (tokens, last update) in the process; a :class:`SharedTokenBucket` keeps them in shared
memory (:class:`SharedBuckets`) and takes its step under a lock, so that ``sinkwatch serve --workers N``
lets a key through at its rate, not N times it. :class:`RateLimiter` holds one bucket per key name, of
either kind.
"""

import fcntl
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from multiprocessing.context import assert_spawning
from pathlib import Path
from typing import Any

__all__ = ["RateLimiter", "SharedBuckets", "TokenBucket", "take_token"]


def take_token(tokens: float, updated: float, now: float, rate: float, burst: int) -> tuple[float, float, float]:
    """Refill a bucket from ``updated`` to ``now`` (capped at ``burst``), then take one token if there is one.

    Returns the bucket's new ``(tokens, updated)`` and the wait: 0 when a token was taken, else the seconds
    until one is available.
    """
    tokens = min(burst, tokens + (now - updated) * rate)
    if tokens >= 1:
        return tokens - 1, now, 0.0
    return tokens, now, (1 - tokens) / rate


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; a request takes one token or waits ``retry_after``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        self._tokens, self._updated, wait = take_token(
            self._tokens, self._updated, self._clock(), self.rate, self.burst
        )
        return wait


class FileLock:
    """An exclusive lock between processes: ``flock`` on a file. The kernel lets go of it when its holder
    dies, so a worker killed while holding it (OOM, SIGKILL) cannot leave the others waiting forever, as a
    semaphore would. Each process opens the file itself, at its first use; it locks nothing between
    threads of one process (the event loop's thread is the only one that takes tokens)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        path.touch()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}  # a descriptor is this process's own

    def __enter__(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


class SharedBuckets:
    """The state of one token bucket per name, in memory shared by processes started with ``spawn``, and
    a :class:`FileLock` at ``lock_path`` that each take holds.

    Create it before the workers, with every name a limiter will check, and hand it to each worker as a
    ``Process(args=...)`` argument (its memory travels only at process creation; plain pickling refuses
    it). Each bucket starts full, whatever burst the limiters use: its tokens are ``inf`` until the first
    take caps them at the burst.
    """

    def __init__(self, names: Iterable[str], lock_path: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self.names = tuple(dict.fromkeys(names))
        self._slots = {name: 2 * index for index, name in enumerate(self.names)}
        self._state = context.RawArray("d", 2 * len(self.names))  # tokens, updated; per name
        self._lock = FileLock(lock_path)
        created = time.monotonic()
        for slot in self._slots.values():
            self._state[slot] = math.inf
            self._state[slot + 1] = created

    def __getstate__(self) -> dict[str, Any]:
        """Only while a process is being spawned: a plain pickle would copy the memory, not share it."""
        assert_spawning(self)
        return self.__dict__

    def bucket(
        self, name: str, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> "SharedTokenBucket":
        """The bucket of ``name``, taking ``rate`` tokens per second up to ``burst``; ValueError if not shared."""
        slot = self._slots.get(name)
        if slot is None:
            raise ValueError(f"no shared rate-limit bucket for {name!r}: SharedBuckets was created without it")
        return SharedTokenBucket(self, slot, rate, burst, clock)


class SharedTokenBucket:
    """A :class:`TokenBucket` whose tokens live in :class:`SharedBuckets`; each take holds their lock."""

    def __init__(
        self, shared: SharedBuckets, slot: int, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._state = shared._state
        self._lock = shared._lock
        self._slot = slot

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        state, slot = self._state, self._slot
        with self._lock:
            state[slot], state[slot + 1], wait = take_token(
                state[slot], state[slot + 1], self._clock(), self.rate, self.burst
            )
        return wait


class RateLimiter:
    """One bucket per key name (names come from the configured keys: a closed, small set).

    Each name gets its bucket when first seen: with ``shared``, its bucket in :class:`SharedBuckets` (checking a
    name it was not created with is a ValueError); without, an in-process one.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 0,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedBuckets | None = None,
    ) -> None:
        self.rate = rate
        self.burst = burst or max(1, math.ceil(rate))
        self._clock = clock
        self._shared = shared
        self._buckets: dict[str, TokenBucket | SharedTokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, key: str) -> float:
        """0 when ``key`` may send a request now, else the seconds to wait."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = self._new_bucket(key)
        return bucket.take()

    def _new_bucket(self, key: str) -> TokenBucket | SharedTokenBucket:
        if self._shared is not None:  # a ValueError for a name the shared buckets were not created with
            return self._shared.bucket(key, self.rate, self.burst, self._clock)
        return TokenBucket(self.rate, self.burst, self._clock)
