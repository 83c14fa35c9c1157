"""The merchant's in-process limiter (GCRA): a burst of the whole budget, then one hit per
interval, so the budget per period over time and never more than a burst plus a period's
worth in any window; refused hits are not counted; keys are independent."""

from __future__ import annotations

import itertools

import pytest
from limits import RateLimitItemPerMinute, RateLimitItemPerSecond

from payportal.http.ratelimit import LocalRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_the_whole_budget_passes_at_once_and_the_next_hit_waits_one_interval() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    item = RateLimitItemPerMinute(60)

    assert [limiter.hit(item, "m") for _ in range(60)] == [0.0] * 60
    wait_s = limiter.hit(item, "m")

    assert wait_s == pytest.approx(1.0)
    clock.now += 0.5
    assert limiter.hit(item, "m") == pytest.approx(0.5)  # refused hits are not counted
    clock.now += 0.5
    assert limiter.hit(item, "m") == 0.0
    assert limiter.hit(item, "m") == pytest.approx(1.0)


def test_a_hammering_client_gets_the_budget_per_period_and_one_burst() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    item = RateLimitItemPerSecond(10)
    allowed: list[float] = []
    for step in range(5_000):  # a client hammering every millisecond for five seconds
        clock.now = 1_000.0 + step / 1_000
        if limiter.hit(item, "m") == 0.0:
            allowed.append(clock.now)

    # The burst of 10, then one every 100 ms: 10 + 49 over five seconds.
    assert len(allowed) == 10 + 49
    for i, at in enumerate(allowed):
        in_window = [t for t in allowed[i:] if t < at + 1.0]
        assert len(in_window) <= 2 * 10 - 1, (at, in_window)
    steady = allowed[10:]
    assert all(b - a == pytest.approx(0.1) for a, b in itertools.pairwise(steady))


def test_keys_and_limits_are_counted_apart() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    item = RateLimitItemPerMinute(2)
    other = RateLimitItemPerMinute(3)

    assert limiter.hit(item, "a") == limiter.hit(item, "a") == 0.0
    assert limiter.hit(item, "a") > 0
    assert limiter.hit(item, "b") == 0.0
    assert limiter.hit(other, "a") == 0.0


def test_idle_keys_are_swept() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    item = RateLimitItemPerSecond(1_000_000)
    for n in range(LocalRateLimiter.SWEEP_EVERY_HITS - 1):
        limiter.hit(item, f"k{n}")
    clock.now += 10
    limiter.hit(item, "last")

    assert len(limiter._arrival) == 1
