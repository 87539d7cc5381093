"""Rate limits shared by processes: one bucket per key name in shared memory, whatever process takes from it."""

import multiprocessing
import os
import pickle
import signal
import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

import pytest

from gateway.security.ratelimit import RateLimiter, SharedBuckets, take_token, token_budget

SPAWN = multiprocessing.get_context("spawn")
BURST = 5


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _take_all(shared: SharedBuckets, name: str, attempts: int, start: Event, got: Queue) -> None:
    """In a spawned process: try ``attempts`` times to take a token for ``name``; report how many were granted."""
    limiter = RateLimiter(rate=0.001, burst=BURST, shared=shared)
    start.wait(timeout=10)
    got.put(sum(limiter.check(name) == 0 for _ in range(attempts)))


def _run(shared: SharedBuckets, name: str, attempts: int, processes: int) -> list[int]:
    start, got = SPAWN.Event(), SPAWN.Queue()
    workers = [SPAWN.Process(target=_take_all, args=(shared, name, attempts, start, got)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    start.set()
    granted = [got.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0
    return granted


def test_processes_sharing_the_buckets_get_the_burst_once_between_them(tmp_path):
    shared = SharedBuckets(tmp_path / "lock")
    granted = _run(shared, "a", attempts=2 * BURST, processes=3)
    assert sum(granted) == BURST
    limiter = RateLimiter(rate=0.001, burst=BURST, shared=shared)
    assert limiter.check("a") > 0
    assert limiter.check("anonymous") == 0


def test_a_spawned_process_takes_from_the_same_memory_as_its_parent(tmp_path):
    shared = SharedBuckets(tmp_path / "lock")
    assert _run(shared, "anonymous", attempts=2, processes=1) == [2]
    limiter = RateLimiter(rate=0.001, burst=BURST, shared=shared)
    assert [limiter.check("anonymous") == 0 for _ in range(BURST)] == [True] * (BURST - 2) + [False] * 2


def test_shared_buckets_are_passed_at_process_creation_not_pickled(tmp_path):
    with pytest.raises(RuntimeError, match="inheritance"):
        pickle.dumps(SharedBuckets(tmp_path / "lock"))


def test_a_shared_bucket_starts_full_and_refills_at_the_rate(tmp_path):
    clock = Clock()
    clock.now = -1000.0  # any reading: the stamp at creation, from time.monotonic, does not count
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock, shared=SharedBuckets(tmp_path / "lock"))
    assert [limiter.check("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.check("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.check("a") == 0
    assert limiter.check("a") == pytest.approx(0.5)
    clock.now += 100.0
    assert [limiter.check("a") for _ in range(4)] == [0, 0, 0, pytest.approx(0.5)]
    assert limiter.check("anonymous") == 0


def test_limiters_on_the_same_shared_buckets_share_the_tokens(tmp_path):
    clock = Clock()
    shared = SharedBuckets(tmp_path / "lock")
    first, second = (RateLimiter(rate=1.0, burst=2, clock=clock, shared=shared) for _ in range(2))
    assert first.check("a") == 0 and second.check("a") == 0
    assert first.check("a") > 0 and second.check("a") > 0
    clock.now += 1.0
    assert second.check("a") == 0 and first.check("a") > 0


def test_names_get_buckets_of_their_own_when_first_seen_by_any_process_up_to_the_capacity(tmp_path):
    shared = SharedBuckets(tmp_path / "lock", capacity=2)
    assert _run(shared, "late", attempts=1, processes=1) == [1]  # a name first seen by a spawned process
    limiter = RateLimiter(rate=0.001, burst=BURST, shared=shared)
    assert [limiter.check("late") == 0 for _ in range(BURST)] == [True] * (BURST - 1) + [False]
    assert limiter.check("b") == 0  # the second and last slot
    with pytest.raises(ValueError, match="more than 2 names"):
        limiter.check("c")


def test_request_and_token_limiters_of_one_key_have_separate_buckets(tmp_path):
    shared = SharedBuckets(tmp_path / "lock")
    requests = RateLimiter(rate=0.001, burst=1, shared=shared)
    tokens = token_budget(60, shared=shared)
    assert requests.check("a") == 0 and requests.check("a") > 0
    assert tokens.check("a", cost=0) == 0


def test_a_token_budget_lets_requests_in_until_its_key_is_in_debt_then_tells_the_wait():
    clock = Clock()
    budget = token_budget(600, clock=clock)  # 10 tokens a second, 600 at once
    assert budget.check("a", cost=0) == 0
    assert budget.check("a", 900, owe=True) == 0  # charged after the fact: 300 in debt
    assert budget.check("a", cost=0) == pytest.approx(30.0)
    clock.now += 30.0
    assert budget.check("a", cost=0) == 0


def test_one_step_refills_up_to_the_burst_then_takes_a_token_or_tells_the_wait():
    assert take_token(0.0, 10.0, 11.0, rate=2.0, burst=3) == (1.0, 11.0, 0.0)
    assert take_token(2.5, 10.0, 20.0, rate=2.0, burst=3) == (2.0, 20.0, 0.0)
    assert take_token(float("inf"), 10.0, 0.0, rate=2.0, burst=3) == (2.0, 0.0, 0.0)
    assert take_token(0.5, 10.0, 10.0, rate=2.0, burst=3) == (0.5, 10.0, 0.25)
    assert take_token(2.0, 10.0, 10.0, rate=2.0, burst=3, cost=5, owe=True) == (-3.0, 10.0, 0.0)
    assert take_token(-3.0, 10.0, 11.0, rate=2.0, burst=3, cost=0) == (-1.0, 11.0, 0.5)


def _hold_the_lock(shared: SharedBuckets, held: Event) -> None:
    """In a spawned process: take the buckets' lock and keep it until killed."""
    with shared._lock:
        held.set()
        time.sleep(60)


def test_a_process_killed_while_holding_the_lock_does_not_stop_the_others(tmp_path):
    shared = SharedBuckets(tmp_path / "lock")
    held = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_the_lock, args=(shared, held))
    holder.start()
    assert held.wait(timeout=30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(timeout=10)
    taken = []
    limiter = RateLimiter(1.0, 1, shared=shared)
    taker = threading.Thread(target=lambda: taken.append(limiter.check("anonymous")), daemon=True)
    taker.start()
    taker.join(timeout=10)
    assert taken == [0.0]
