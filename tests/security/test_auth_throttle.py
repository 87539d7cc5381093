"""Failed API-key attempts per client address: counted over fixed windows, in a table of bounded size."""

from gateway.security.auth_throttle import AuthThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_throttled_after_its_limit_until_its_window_ends():
    clock = Clock()
    throttle = AuthThrottle(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert throttle.wait("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
    clock.now += 10
    assert throttle.wait("10.0.0.1") == 50
    assert throttle.wait("10.0.0.2") == 0
    clock.now += 50
    assert throttle.wait("10.0.0.1") == 0


def test_failures_in_an_old_window_do_not_count():
    clock = Clock()
    throttle = AuthThrottle(limit=2, window=60, clock=clock)
    throttle.failed("a")
    clock.now += 61
    throttle.failed("a")
    assert throttle.wait("a") == 0


def test_the_address_table_stays_bounded_forgetting_the_least_recent():
    throttle = AuthThrottle(limit=1, window=60, max_addresses=100, clock=Clock())
    throttle.failed("first")
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100
    assert throttle.wait("first") == 0
    assert throttle.wait("10.0.3.231") > 0


def test_a_zero_limit_is_off():
    assert not AuthThrottle(limit=0, window=60).enabled
