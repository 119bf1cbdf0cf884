"""The full-jitter backoff, shared by stage retries and the fetch job."""

from __future__ import annotations

import dataclasses
import random

import pytest

from spindle.policies.retry import RetryPolicy, full_jitter

pytestmark = pytest.mark.timeout(10)


def test_full_jitter_stays_under_the_doubling_bound_and_the_cap() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        bound = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = [full_jitter(attempt, 0.5, 30.0, rng) for _ in range(50)]
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > bound / 2  # spread over the range, not stuck near zero
    assert max(full_jitter(20, 0.5, 30.0, rng) for _ in range(200)) > 15


def test_full_jitter_counts_attempts_below_one_as_the_first() -> None:
    assert full_jitter(0, 1.0, 30.0, random.Random(3)) == full_jitter(
        1, 1.0, 30.0, random.Random(3)
    )


def test_full_jitter_of_a_huge_attempt_is_capped_not_an_overflow() -> None:
    delay = full_jitter(100_000, 0.5, 30.0, random.Random(1))
    assert 0 <= delay <= 30.0


def test_a_stage_retry_waits_what_full_jitter_says() -> None:
    policy = dataclasses.replace(RetryPolicy.make(3, (0.2, 5.0)), _rng=random.Random(11))
    twin = random.Random(11)
    for attempts in (1, 2, 3, 7):
        assert policy.delay(attempts) == full_jitter(attempts, 0.2, 5.0, twin)
