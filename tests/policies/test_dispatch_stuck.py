"""Least loaded, with a worker stuck on a long batch counted as the most loaded."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from spindle.policies.dispatch import STUCK, least_loaded


@dataclass
class W:
    index: int
    pending: list[int] = field(default_factory=list)
    usable: bool = True
    since: float = 0.0


def test_a_worker_long_on_one_batch_gets_no_more_while_another_can() -> None:
    long_ago = time.monotonic() - 10 * STUCK
    stuck = W(0, [1], since=long_ago)
    busy = W(1, [1, 2, 3], since=time.monotonic())
    assert least_loaded([stuck, busy]) is busy


def test_a_worker_just_started_on_its_batch_is_not_stuck() -> None:
    a = W(0, [1], since=time.monotonic())
    b = W(1, [1, 2], since=time.monotonic())
    assert least_loaded([a, b]) is a


def test_when_every_worker_is_stuck_as_long_the_fewest_pending_decide() -> None:
    long_ago = time.monotonic() - 10.5 * STUCK
    a = W(0, [1, 2], since=long_ago)
    b = W(1, [1], since=long_ago)
    assert least_loaded([a, b]) is b


def test_when_every_worker_is_stuck_the_one_stuck_for_least_long_comes_first() -> None:
    # One worker held for a minute by a job that may never return, the other a little
    # over STUCK into its batch, with more queued: the batch goes to the second.
    now = time.monotonic()
    held = W(0, [1], since=now - 60)
    slow = W(1, [1, 2], since=now - 1.5 * STUCK)
    assert least_loaded([held, slow]) is slow
    assert least_loaded([slow, held]) is slow


def test_an_idle_worker_comes_first_and_workers_without_since_are_never_stuck() -> None:
    @dataclass
    class Plain:
        index: int
        pending: list[int]
        usable: bool = True

    assert least_loaded([Plain(0, [1]), Plain(1, [])]).index == 1  # type: ignore[union-attr]
    assert least_loaded([W(0, [1], since=1.0), W(1, [])]).index == 1  # type: ignore[union-attr]
