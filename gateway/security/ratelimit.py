"""Per-key rate limits as token buckets, per process or shared by the processes of a server: requests per
second, and model tokens per minute (a budget charged after each request with what it used).

One step of the arithmetic, :func:`take_token`, serves both kinds of bucket. A :class:`TokenBucket` keeps
its two numbers (tokens, last update) in the process; a :class:`SharedTokenBucket` keeps them in shared
memory (:class:`SharedBuckets`) and takes its step under a lock, so that ``sinkwatch serve --workers N``
lets a key through at its rate, not N times it. :class:`RateLimiter` holds one bucket per key name, of
either kind.
"""

import fcntl
import hashlib
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from multiprocessing.context import assert_spawning
from pathlib import Path
from typing import Any

__all__ = ["RateLimiter", "SharedBuckets", "TokenBucket", "take_token", "token_budget"]

_DIGEST = 16  # bytes of a name's digest in the shared table


def take_token(
    tokens: float, updated: float, now: float, rate: float, burst: int, cost: float = 1.0, owe: bool = False
) -> tuple[float, float, float]:
    """Refill a bucket from ``updated`` to ``now`` (capped at ``burst``), then take ``cost`` tokens if there are
    as many, or whatever the bucket holds with ``owe`` (it may go below zero: a debt refilled first).

    Returns the bucket's new ``(tokens, updated)`` and the wait: 0 when the tokens were taken, else the
    seconds until they are available. A ``cost`` of 0 asks whether the bucket is out of debt.
    """
    tokens = min(burst, tokens + (now - updated) * rate)
    if tokens >= cost or owe:
        return tokens - cost, now, 0.0
    return tokens, now, (cost - tokens) / rate


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; a request takes one token or waits ``retry_after``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self, cost: float = 1.0, owe: bool = False) -> float:
        """0 when ``cost`` tokens were taken, else the seconds until they are available (:func:`take_token`)."""
        self._tokens, self._updated, wait = take_token(
            self._tokens, self._updated, self._clock(), self.rate, self.burst, cost, owe
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
    """The state of up to ``capacity`` token buckets, one per name, in memory shared by processes started
    with ``spawn``, and a :class:`FileLock` at ``lock_path`` that each take holds.

    Create it before the workers and hand it to each worker as a ``Process(args=...)`` argument (its memory
    travels only at process creation; plain pickling refuses it). A name gets its bucket when a process
    first asks for it (keys reloaded while serving included): the shared table of names (their digests)
    tells every process the same slot. Each bucket starts full, whatever burst the limiters use: its
    tokens are ``inf`` until the first take caps them at the burst.
    """

    def __init__(self, lock_path: Path, capacity: int = 4096) -> None:
        context = multiprocessing.get_context("spawn")
        self.capacity = capacity
        self._names = context.RawArray("c", _DIGEST * capacity)  # the digest of each slot's name, in order
        self._used = context.RawValue("q", 0)
        self._state = context.RawArray("d", 2 * capacity)  # tokens, updated; per slot
        self._lock = FileLock(lock_path)
        self._slots: dict[str, int] = {}  # this process's copy of the table, as far as it has looked

    def __getstate__(self) -> dict[str, Any]:
        """Only while a process is being spawned: a plain pickle would copy the memory, not share it."""
        assert_spawning(self)
        return self.__dict__

    def bucket(
        self, name: str, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> "SharedTokenBucket":
        """The bucket of ``name``, taking ``rate`` tokens per second up to ``burst``; a ValueError when all
        ``capacity`` buckets are taken by other names."""
        slot = self._slots.get(name)
        if slot is None:
            with self._lock:
                slot = self._slots[name] = self._find_or_add(
                    hashlib.blake2b(name.encode(), digest_size=_DIGEST).digest()
                )
        return SharedTokenBucket(self, slot, rate, burst, clock)

    def _find_or_add(self, digest: bytes) -> int:
        """The state slot of the name with ``digest``, given a new full bucket if it had none (lock held)."""
        used = self._used.value
        for index in range(used):
            if self._names[index * _DIGEST : (index + 1) * _DIGEST] == digest:
                return 2 * index
        if used == self.capacity:
            raise ValueError(f"more than {self.capacity} names are rate-limited: no shared bucket is left")
        self._names[used * _DIGEST : (used + 1) * _DIGEST] = digest
        self._state[2 * used], self._state[2 * used + 1] = math.inf, time.monotonic()
        self._used.value = used + 1
        return 2 * used


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

    def take(self, cost: float = 1.0, owe: bool = False) -> float:
        """0 when ``cost`` tokens were taken, else the seconds until they are available (:func:`take_token`)."""
        state, slot = self._state, self._slot
        with self._lock:
            state[slot], state[slot + 1], wait = take_token(
                state[slot], state[slot + 1], self._clock(), self.rate, self.burst, cost, owe
            )
        return wait


class RateLimiter:
    """One bucket per key name (names come from the configured keys: a closed, small set).

    Each name gets its bucket when first seen: with ``shared``, its bucket in :class:`SharedBuckets` (under
    ``kind:name``, so that limiters of several kinds share one :class:`SharedBuckets`); without, an
    in-process one.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 0,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedBuckets | None = None,
        kind: str = "requests",
    ) -> None:
        self.rate = rate
        self.burst = burst or max(1, math.ceil(rate))
        self.kind = kind
        self._clock = clock
        self._shared = shared
        self._buckets: dict[str, TokenBucket | SharedTokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, key: str, cost: float = 1.0, owe: bool = False) -> float:
        """0 when ``key`` may spend ``cost`` now (spent), else the seconds to wait (:func:`take_token`)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = self._new_bucket(key)
        return bucket.take(cost, owe)

    def _new_bucket(self, key: str) -> TokenBucket | SharedTokenBucket:
        if self._shared is not None:
            return self._shared.bucket(f"{self.kind}:{key}", self.rate, self.burst, self._clock)
        return TokenBucket(self.rate, self.burst, self._clock)


def token_budget(
    tokens_per_minute: int, clock: Callable[[], float] = time.monotonic, shared: SharedBuckets | None = None
) -> RateLimiter:
    """A budget of model tokens (prompt plus completion) per key: ``tokens_per_minute``, a minute's worth at
    once. A request is let in while its key is out of debt (``check(key, cost=0)``) and charged what it used
    once done (``check(key, used, owe=True)``)."""
    return RateLimiter(tokens_per_minute / 60, tokens_per_minute, clock, shared, kind="tokens")
