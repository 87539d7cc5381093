"""API keys are kept as digests only and matched in constant time; rate limits are token buckets."""

import hashlib

import pytest

from gateway.security.keys import ApiKeys, parse_entry
from gateway.security.ratelimit import RateLimiter, TokenBucket


def test_a_key_is_identified_by_name_and_stored_only_as_its_digest():
    keys = ApiKeys.load("alice:sk-alice-secret, bob:sha256:" + hashlib.sha256(b"sk-bob").hexdigest())
    assert keys.identify("sk-alice-secret") == "alice"
    assert keys.identify("sk-bob") == "bob"
    assert keys.identify("sk-alice-secreT") is None
    assert keys.identify("") is None
    assert "sk-alice-secret" not in repr(vars(keys)) and b"sk-alice-secret" not in repr(vars(keys)).encode()


def test_keys_come_from_a_file_too(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# team keys\ncarol:sk-carol\n\n")
    keys = ApiKeys.load("", str(path))
    assert keys.enabled and keys.identify("sk-carol") == "carol"
    assert not ApiKeys.load("").enabled


@pytest.mark.parametrize("entry", ["no-name-separator", ":sk-x", "dave:", "eve:sha256:abc"])
def test_malformed_entries_are_refused_without_echoing_the_key(entry):
    with pytest.raises(ValueError) as refused:
        parse_entry(entry)
    assert "sk-x" not in str(refused.value)


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        ApiKeys.load("a:k1,a:k2")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    assert bucket.take() == pytest.approx(0.5)
    clock.now = 0.5
    assert bucket.take() == 0
    assert bucket.take() == pytest.approx(0.5)
    clock.now = 100.0
    assert [bucket.take() for _ in range(4)][:3] == [0, 0, 0]


def test_each_key_has_its_own_bucket():
    clock = Clock()
    limiter = RateLimiter(rate=1.0, clock=clock)
    assert limiter.burst == 1
    assert limiter.check("a") == 0 and limiter.check("b") == 0
    assert limiter.check("a") > 0 and limiter.check("b") > 0
    assert not RateLimiter(rate=0).enabled
